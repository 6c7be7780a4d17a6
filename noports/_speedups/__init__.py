"""Hot-path twins. ``<name>_c`` is compiled from ``_speedups/<name>_c.pyx`` at the top of the
repository; ``<name>_py`` is its pure-Python twin and the specification of its behaviour.
Library code never imports a twin by name: it calls ``noports._compat.speedups(name)``.
"""

NAMES = ("pump", "xfer")
