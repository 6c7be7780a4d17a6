"""npt: a tunnel to any TCP service a NoPorts device permits (spec 3.3, 7.2).

Modules: ``durations`` (``-T`` human durations), ``run`` (flags, the session loop, ``-x``
detaching, ``-K`` keep-alive, multi mode via ``noports.tunnel.ClientMulti``).
``agentwire``: the socket of ``noports agent`` (path, ownership checks, messages), shared by
the agent (``noports.cli.agent``) and the thin ``npt`` front (``noports.npt_front``).
"""
