"""The secure link: an obfuscated Noise IK handshake, then fixed-size cells."""
