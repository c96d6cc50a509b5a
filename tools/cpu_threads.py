"""How many torch threads a CPU run should use without oversubscribing.

On a shared machine a thread count above the idle cores makes every
iteration wait for descheduled threads: on a 2-core machine with other work
running, ``cpu_threads=2`` trained at 5.5-8.4 s per iteration where one
thread took 0.49 s. The config key ``cpu_threads`` picks the count:

* an integer: that many threads for this machine, shared out between its
  local processes (``LOCAL_WORLD_SIZE``);
* ``'auto'`` or unset: :func:`choose_cpu_threads`.
"""
import math
import os

THREAD_ENV_VARS = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')


def usable_cores():
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average():
    """The 1-minute load average, or ``None`` where the OS has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_times(stat_path):
    """``(busy, total)`` jiffies of all CPUs from ``/proc/stat``'s first
    line."""
    with open(stat_path) as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window=0.3, cpu_count=None, stat_path='/proc/stat'):
    """How many cores other processes keep busy *now*: the machine's busy
    fraction over ``window`` seconds (``/proc/stat``) times its cores.
    Falls back to the 1-minute load average (``None`` where neither
    exists). The load average lags by a minute: right after a job ends it
    still counts it, right after one starts it does not yet."""
    import time
    try:
        busy0, total0 = _cpu_times(stat_path)
        time.sleep(window)
        busy1, total1 = _cpu_times(stat_path)
    except (OSError, ValueError, IndexError):
        return load_average()
    if total1 <= total0:
        return load_average()
    cores = cpu_count or os.cpu_count() or 1
    return cores * (busy1 - busy0) / (total1 - total0)


def choose_cpu_threads(requested='auto', env=None, affinity=None,
                       cpu_count=None, load=None, current=None):
    """``(threads, reason)``: the torch thread count for one process.

    Args:
        requested: the config's ``cpu_threads``: an int (threads for the
            machine, split between local processes) or ``'auto'``/``None``.
        env: environment (default ``os.environ``); read for
            ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` and ``LOCAL_WORLD_SIZE``.
        affinity: cores this process may use (default
            ``os.sched_getaffinity``).
        cpu_count: cores of the machine (default ``os.cpu_count()``).
        load: cores busy with other work (default :func:`busy_cores`:
            sampled from ``/proc/stat``, else the 1-minute load average;
            ignored where the OS has neither).
        current: torch's present thread count
            (default ``torch.get_num_threads()``).

    ``'auto'`` keeps a count the user chose (``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS`` set, or ``torch.set_num_threads`` lowered it), and
    otherwise takes the cores of the affinity that are idle now
    (``cpu_count - load``, rounded), split between the local processes, at
    least 1.
    """
    env = os.environ if env is None else env
    local = max(1, int(env.get('LOCAL_WORLD_SIZE', 1) or 1))
    if requested not in (None, 'auto'):
        if isinstance(requested, bool) or not isinstance(requested, int) \
                or requested < 1:
            raise ValueError(f"cpu_threads must be a positive int or 'auto', "
                             f'got {requested!r}')
        threads = max(1, requested // local)
        return threads, (f'cpu_threads={requested} in the config, '
                         f'{local} local process(es)')
    for name in THREAD_ENV_VARS:
        value = env.get(name, '')
        if value.strip().isdigit() and int(value) > 0:
            return int(value), f'{name}={int(value)}'
    cores = usable_cores() if affinity is None else max(1, affinity)
    if cpu_count is None:
        cpu_count = os.cpu_count() or cores
    if load is None:
        load = busy_cores(cpu_count=cpu_count)
    idle = cores
    reason = f'auto: {cores} usable core(s)'
    if load is not None:
        idle = min(cores, max(1, math.floor(cpu_count - load + 0.5)))
        reason += f', load {load:.1f} on {cpu_count}'
    threads = max(1, idle // local)
    if local > 1:
        reason += f', {local} local processes'
    if current is None:
        import torch
        current = torch.get_num_threads()
    if current < threads:
        threads = current
        reason += f', torch already set to {current}'
    return threads, reason
