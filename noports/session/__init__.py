"""What sshnp/npt (clients), sshnpd (device daemon) and srvd (relay) say to each other.

``wire`` is the single definition of the request and response payloads (spec 3, 4.2, 10), so
every program builds and parses them the same way.
"""
