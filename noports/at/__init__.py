"""atProtocol: client (noports.at.*) and embedded server (noports.at.server)."""
