"""Discovery sources: mDNS on the LAN, bootstrap lists, invites, cached peers."""
