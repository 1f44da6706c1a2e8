"""Operations on the lab shared by the CLI, the engine and (later) the API: each runs inside a caller's
database session, validates first and writes only when everything is valid."""
