"""The NoPorts policy / authorizer service (NPA).

:mod:`.policy` holds the decision logic: a TOML policy file mapping client atSigns and
device names or groups to the ``host:port`` targets they may open, reloaded on change.
"""
