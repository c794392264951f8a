-- Offline stand-in for xmake-repo's pybind11: InfiniCore's xmake.lua requires it
-- globally, but we build only the C API targets, which never include it. Fetching
-- from the system keeps `xmake f` from cloning package repositories.
package("pybind11")
    set_kind("library", {headeronly = true})
    set_description("pybind11 taken from the system (offline build of InfiniCore)")
    on_fetch(function (package, opt)
        local incs = os.getenv("INFINILM_PYBIND11_INCLUDES")
        return {includedirs = incs and incs:split(path.envsep()) or {}}
    end)
package_end()
