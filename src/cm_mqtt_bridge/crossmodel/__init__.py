"""The CrossModel API: wire models, the HTTP client and the fetch that turns answers into a
`core.model.Snapshot`, plus the stand-in server used by `demo`.

May import `core` and `config`.
"""
