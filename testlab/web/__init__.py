"""The web server: REST API under /api/v1, HTML pages, live updates, metrics and health.

`create_app(settings)` builds it (testlab/web/app.py); `testlab serve` runs it under uvicorn.
"""
