"""Configuration: the validated config models, YAML/secret-file reading, env and flag layering.

May import `core`, `store` and `notify` (the channel registry: each channel's config model).
Every `*_file` secret is read here, by the loader; the models never read a file.
"""
