"""Cryptographic building blocks: keys, .atKeys files, signed envelopes, ciphers."""


def cryptography_text() -> str:
    """cryptography's version and which AEAD path the data plane uses."""
    import cryptography

    from .records import AEAD_INTO
    from .stream import CTR_INTO

    if AEAD_INTO and CTR_INTO:
        return f"cryptography {cryptography.__version__} in-place AEAD"
    slow = "AEAD" if CTR_INTO else "AEAD and CTR"
    return f"cryptography {cryptography.__version__} allocating {slow} (slower; 47+ is in place)"
