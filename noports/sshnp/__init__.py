"""sshnp: ssh to a NoPorts device over an in-process tunnel (spec 3.1, 3.2, 7.1).

Modules: ``args`` (flags, official env-style config files and profiles), ``run`` (the v5 flow,
the v4 "double ssh" flow, ``-x``), ``stdio`` (``--stdio`` for ``ProxyCommand``),
``sshconfig`` (the ``ssh-config`` subcommand), ``listing`` (``--list-devices``). The ``-x``
detach is :mod:`noports.cli.detach` (shared with npt).
"""
