"""atProtocol: the client (this package's top-level modules) and the embedded server
(``noports.atserver``).

Client layers, from the wire up (nothing is imported here, so importing one layer never
pulls in another):

* :mod:`noports.at.commands`: command builders (one line per verb, quirks included) and
  :class:`~noports.at.commands.Metadata`.
* :mod:`noports.at.protocol`: the sans-IO codec ``AtClientCodec`` (bytes in, events out).
* :mod:`noports.at.config`: ``root_address()`` and ``ssl_context()`` (flag > NOPORTS_ROOT /
  NOPORTS_CA_FILE > defaults).
* :mod:`noports.at.connection`: ``AtConnection`` (TLS, root lookup, ``execute``, PKAM/CRAM)
  and ``find_atserver`` / ``connect_atserver`` / ``connect_authenticated``.
* :mod:`noports.at.sharedkeys`: per-pair AES keys laid out as the official clients do.
* :mod:`noports.at.notifications`: decryption and the reconnecting ``Monitor``.
* :mod:`noports.at.client`: ``AtClient``, the high-level API.
"""
