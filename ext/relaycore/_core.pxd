# Cython looks for the interface of the module relaycore._core at relaycore/_core.pxd on
# its include path (setup.py's include_path is ext/). The interface is ext/_core.pxd, next
# to _core.pyx, where `cython ext/_core.pyx` finds it too.
include "../_core.pxd"
