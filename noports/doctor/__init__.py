"""Checks shared by ``noports doctor`` and ``sshnpd --doctor`` (:mod:`.checks`).

One function per check, each returning :class:`~.checks.Check` results with the fix; the two
commands only differ in which checks they run and how they print them.
"""
