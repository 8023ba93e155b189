"""Exit codes of every command: 0 ok, 1 upstream (API, broker, receiver), 2 config or usage,
130 interrupted (Ctrl-C), 141 the reader of the output went away (`| head`), as a shell reports
a program that SIGPIPE ended."""

EXIT_OK, EXIT_UPSTREAM, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_PIPE = 141
