"""The parent process: owns the listening sockets, forks and watches the workers."""
