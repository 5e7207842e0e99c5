"""The machine is shared with other jobs: every benchmark table says how busy it was around the run."""
import os


def load_footer(load_before: float) -> str:
    return f"{os.cpu_count()} cores; load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
