-- Offline stand-in for xmake-repo's boost. Upstream InfiniCore's xmake.lua requires
-- boost (stacktrace) globally for its C++ API; none of the C API targets we build
-- (infinirt, infiniop, infiniccl) includes or links it. Resolving it to nothing keeps
-- `xmake f` from trying to download and build boost, which it cannot do offline.
package("boost")
    set_kind("library", {headeronly = true})
    set_description("empty stand-in: the InfiniCore C API does not use boost")
    add_configs("stacktrace", {description = "accepted and ignored", default = false, type = "boolean"})
    on_fetch(function (package, opt)
        return {}
    end)
package_end()
