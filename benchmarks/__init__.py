"""Running, sweeping and reporting: one job, sweeps, the leaderboard and the CLI."""
