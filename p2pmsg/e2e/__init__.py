"""End-to-end encryption: X3DH-style session start, Double Ratchet, sealed sender."""
