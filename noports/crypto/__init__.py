"""Cryptographic building blocks: keys, .atKeys files, signed envelopes, ciphers."""
