"""mediactl's exit codes: one for each way a command can end (see the main module's docstring)."""

EXIT_OK = 0  # for a watch: the job SUCCEEDED
EXIT_JOB_FAILED = 1
EXIT_JOB_CANCELED = 2
EXIT_RPC_ERROR = 3  # or a watch that could not follow the job to its end
EXIT_DOWNLOAD_FAILED = 4  # an output not saved (or not matching its sha256), or nothing to save
EXIT_USAGE = 64  # sysexits EX_USAGE; argparse's own 2 would read as CANCELED
EXIT_INTERRUPTED = 130
