"""Connection profiles as the official NoPorts desktop app keeps them.

* :mod:`.model`: :class:`Profile` (the desktop app's JSON fields) and the import/export
  document ``{"profiles": [...]}`` in JSON or YAML.
* :mod:`.store`: profiles, favourites and settings under the desktop app's atServer self keys
  (``<uuid>.profiles.noports``, ``favorites.noports``, ``settings.noports``), so a profile made
  here shows up in the desktop app and the other way round.
* :mod:`.runner`: starts and stops npt tunnels for profiles in this process, with live state.
"""

from .model import DocumentError, Profile, dump_document, parse_document

__all__ = ["DocumentError", "Profile", "dump_document", "parse_document"]
