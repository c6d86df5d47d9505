//! Which CPU the caller runs on, and which CPUs the process may use.

/// The CPU the calling thread runs on now (`sched_getcpu`; glibc answers from rseq, a few
/// nanoseconds). Returns 0 if the kernel cannot tell.
#[inline]
pub fn current_cpu() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getcpu takes no arguments and touches no caller memory; it returns
        // -1 on failure, which is handled below.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).unwrap_or(0)
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

/// The number of CPUs the system could bring online (`num_possible_cpus`); at least 1.
pub fn possible_cpus() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// The CPUs in the process's affinity mask, ascending; the default online set.
/// Falls back to `0..possible_cpus()` if the mask cannot be read.
pub fn process_affinity() -> Vec<usize> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is a plain bit array for which all-zero is a valid (empty) value.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of exactly the size passed; pid 0 is
        // the calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if rc == 0 {
            let max = libc::CPU_SETSIZE as usize;
            // SAFETY: CPU_ISSET only reads `set`, and every index is below CPU_SETSIZE.
            let cpus: Vec<usize> = (0..max)
                .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
                .collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..possible_cpus()).collect()
}

/// Pins the calling thread to `cpu`. Best effort: errors are returned, never fatal.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        // SAFETY: all-zero is a valid empty cpu_set_t.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu` was checked against CPU_SETSIZE above; `set` is a valid cpu_set_t.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let _ = cpu;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_cpu_is_in_the_affinity_set() {
        let cpus = process_affinity();
        assert!(!cpus.is_empty());
        assert!(
            cpus.contains(&current_cpu()),
            "{cpus:?} vs {}",
            current_cpu()
        );
    }
}
