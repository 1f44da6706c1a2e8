"""`testlab demo`: a sandbox lab on this machine running example jobs end to end."""
