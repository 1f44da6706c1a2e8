"""The REST API, one router per resource; every route reads or writes through testlab.services."""
