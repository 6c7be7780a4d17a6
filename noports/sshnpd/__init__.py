"""The device daemon (sshnpd) and its pure-logic building blocks.

The modules here hold the security-critical decisions the daemon makes before it touches a
socket or a file: which device names and atSigns are acceptable (:mod:`.names`), which
``host:port`` targets a request may reach (:mod:`.permitopen`), which ssh public keys may be
written to ``authorized_keys`` and how (:mod:`.authkeys`), and what the daemon advertises
in ping responses (:mod:`.features`). They do no network I/O so they can be tested, fuzzed
and reasoned about in isolation.
"""
