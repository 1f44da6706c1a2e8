"""Operations on the lab shared by the CLI and the engine (the web API will use them too): each runs
inside a caller's database session, validates first and writes only when everything is valid."""
