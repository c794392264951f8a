-- Offline stand-in for xmake-repo's openmp: the system compiler's -fopenmp.
package("openmp")
    set_kind("library", {headeronly = true})
    set_description("OpenMP from the system compiler (offline build of InfiniCore)")
    on_fetch(function (package, opt)
        return {cxflags = "-fopenmp", ldflags = "-fopenmp", shflags = "-fopenmp"}
    end)
package_end()
