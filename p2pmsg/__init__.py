"""p2pmsg: peer-to-peer messaging that no single blocked server can switch off."""
