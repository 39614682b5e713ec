//! The host source: CPU, memory, swap, filesystems, disk I/O, network, load, uptime and process
//! counts, named and meant as node_exporter does so that dashboards and rules carry over.
//!
//! Host facts, load and boot time come from sysinfo; where node_exporter's meaning needs the
//! kernel's own counters (CPU time per mode, /proc/diskstats, /proc/net/dev, /proc/meminfo,
//! statvfs for inodes) they are read directly. Parsers are pure functions over text and skip
//! lines they do not understand.

use fleetwatch_common::model::{HostFacts, Label, MetricKind, Sample, Series, SeriesSamples};
use std::collections::HashMap;

/// Filesystem types that are not storage (node_exporter's default exclusions).
const PSEUDO_FS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "fusectl",
    "hugetlbfs",
    "iso9660",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "procfs",
    "pstore",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tracefs",
    "nfsd",
    "ramfs",
    "efivarfs",
];
const PSEUDO_MOUNT_PREFIXES: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run/credentials",
    "/var/lib/docker",
    "/var/lib/containers",
];
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// Collects host metrics.
pub struct HostSource {
    system: sysinfo::System,
    clk_tck: f64,
    prev_cpu: HashMap<String, [u64; 8]>,
    out: Vec<SeriesSamples>,
}

/// One CPU line of /proc/stat: name (`cpu` for the total, `cpuN`) and ticks per mode.
pub fn parse_proc_stat_cpus(text: &str) -> Vec<(String, [u64; 8])> {
    text.lines()
        .filter(|l| l.starts_with("cpu"))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let name = parts.next()?.to_string();
            let mut ticks = [0u64; 8];
            for t in ticks.iter_mut() {
                *t = parts.next()?.parse().ok()?;
            }
            Some((name, ticks))
        })
        .collect()
}

/// `procs_running` and `procs_blocked` from /proc/stat.
pub fn parse_proc_stat_procs(text: &str) -> (Option<f64>, Option<f64>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    (get("procs_running "), get("procs_blocked "))
}

/// `Key: value kB` lines of /proc/meminfo, in bytes.
pub fn parse_meminfo(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let v: f64 = parts.next()?.parse().ok()?;
            let mult = if parts.next() == Some("kB") {
                1024.0
            } else {
                1.0
            };
            Some((k.trim().to_string(), v * mult))
        })
        .collect()
}

/// Per-device counters from /proc/diskstats: reads, read sectors, writes, written sectors,
/// milliseconds doing I/O.
pub fn parse_diskstats(text: &str) -> Vec<(String, [u64; 5])> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 14 {
                return None;
            }
            let n = |i: usize| f[i].parse::<u64>().ok();
            Some((f[2].to_string(), [n(3)?, n(5)?, n(7)?, n(9)?, n(12)?]))
        })
        .filter(|(d, _)| !(d.starts_with("ram") || d.starts_with("loop") || d.starts_with("fd")))
        .collect()
}

/// Per-interface counters from /proc/net/dev: rx bytes, packets, errs, drop, tx bytes,
/// packets, errs, drop.
pub fn parse_net_dev(text: &str) -> Vec<(String, [u64; 8])> {
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<_>>>()?;
            if f.len() < 16 {
                return None;
            }
            Some((
                name.trim().to_string(),
                [f[0], f[1], f[2], f[3], f[8], f[9], f[10], f[11]],
            ))
        })
        .collect()
}

/// Threads (scheduling entities) from /proc/loadavg's `running/total` field.
pub fn parse_loadavg_threads(text: &str) -> Option<f64> {
    text.split_whitespace()
        .nth(3)?
        .split_once('/')?
        .1
        .parse()
        .ok()
}

/// Mounted filesystems worth reporting from /proc/mounts: (device, mount point, fs type, read-only).
pub fn parse_mounts(text: &str) -> Vec<(String, String, String, bool)> {
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 {
                return None;
            }
            let mount = f[1].replace("\\040", " ");
            if PSEUDO_FS.contains(&f[2])
                || PSEUDO_MOUNT_PREFIXES
                    .iter()
                    .any(|p| mount == *p || mount.starts_with(&format!("{p}/")))
                || !seen.insert(mount.clone())
            {
                return None;
            }
            let ro = f[3].split(',').any(|o| o == "ro");
            Some((f[0].to_string(), mount, f[2].to_string(), ro))
        })
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

struct Out<'a> {
    out: &'a mut Vec<SeriesSamples>,
    now_ms: i64,
}

impl Out<'_> {
    fn push(&mut self, name: &str, kind: MetricKind, labels: &[(&str, &str)], value: f64) {
        self.out.push(SeriesSamples {
            series: Series::new(name, labels.iter().map(|(k, v)| Label::new(*k, *v))),
            kind,
            samples: vec![Sample {
                timestamp_ms: self.now_ms,
                value,
            }],
        });
    }
    fn gauge(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricKind::Gauge, labels, value);
    }
    fn counter(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.push(name, MetricKind::Counter, labels, value);
    }
}

/// statvfs of a mount point: size, free, avail bytes, files, files free.
fn statvfs(path: &str) -> Option<[f64; 5]> {
    let c = std::ffi::CString::new(path).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and s a properly sized out-parameter.
    // Like node_exporter, this can block on a hung network mount.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as f64;
    Some([
        s.f_blocks as f64 * frsize,
        s.f_bfree as f64 * frsize,
        s.f_bavail as f64 * frsize,
        s.f_files as f64,
        s.f_ffree as f64,
    ])
}

impl Default for HostSource {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSource {
    /// A source with nothing collected yet.
    pub fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        Self {
            system: sysinfo::System::new(),
            clk_tck: if tck > 0 { tck as f64 } else { 100.0 },
            prev_cpu: HashMap::new(),
            out: Vec::new(),
        }
    }

    /// Facts for the agent's hello.
    pub fn facts(&mut self) -> HostFacts {
        self.system.refresh_memory();
        HostFacts {
            hostname: sysinfo::System::host_name().unwrap_or_default(),
            os: sysinfo::System::long_os_version().unwrap_or_default(),
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
            arch: sysinfo::System::cpu_arch(),
            cpu_count: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: self.system.total_memory(),
            boot_time_seconds: sysinfo::System::boot_time(),
        }
    }

    /// One collection pass, every sample stamped `now_ms`.
    pub fn collect(&mut self, now_ms: i64) -> Vec<SeriesSamples> {
        let mut buf = std::mem::take(&mut self.out);
        buf.clear();
        let mut o = Out {
            out: &mut buf,
            now_ms,
        };
        self.cpu(&mut o);
        Self::memory(&mut o);
        Self::filesystems(&mut o);
        Self::disks(&mut o);
        Self::network(&mut o);
        let load = sysinfo::System::load_average();
        o.gauge("node_load1", &[], load.one);
        o.gauge("node_load5", &[], load.five);
        o.gauge("node_load15", &[], load.fifteen);
        let boot = sysinfo::System::boot_time() as f64;
        o.gauge("node_boot_time_seconds", &[], boot);
        o.gauge("node_time_seconds", &[], now_ms as f64 / 1000.0);
        o.gauge(
            "fleetwatch_host_uptime_seconds",
            &[],
            sysinfo::System::uptime() as f64,
        );
        let pids = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .bytes()
                            .all(|b| b.is_ascii_digit())
                    })
                    .count()
            })
            .unwrap_or(0);
        o.gauge("node_processes_pids", &[], pids as f64);
        if let Some(t) = parse_loadavg_threads(&read("/proc/loadavg")) {
            o.gauge("node_processes_threads", &[], t);
        }
        let (running, blocked) = parse_proc_stat_procs(&read("/proc/stat"));
        if let Some(r) = running {
            o.gauge("node_procs_running", &[], r);
        }
        if let Some(b) = blocked {
            o.gauge("node_procs_blocked", &[], b);
        }
        let (sysname, release, machine) = (
            sysinfo::System::name().unwrap_or_default(),
            sysinfo::System::kernel_version().unwrap_or_default(),
            sysinfo::System::cpu_arch(),
        );
        let nodename = sysinfo::System::host_name().unwrap_or_default();
        o.gauge(
            "node_uname_info",
            &[
                ("sysname", &sysname),
                ("release", &release),
                ("machine", &machine),
                ("nodename", &nodename),
            ],
            1.0,
        );
        let result = buf.clone();
        self.out = buf;
        result
    }

    fn cpu(&mut self, o: &mut Out<'_>) {
        let stat = read("/proc/stat");
        for (name, ticks) in parse_proc_stat_cpus(&stat) {
            if let Some(core) = name.strip_prefix("cpu").filter(|c| !c.is_empty()) {
                for (mode, t) in CPU_MODES.iter().zip(ticks) {
                    o.counter(
                        "node_cpu_seconds_total",
                        &[("cpu", core), ("mode", mode)],
                        t as f64 / self.clk_tck,
                    );
                }
            }
            if let Some(prev) = self.prev_cpu.get(&name) {
                let delta: Vec<u64> = ticks
                    .iter()
                    .zip(prev)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect();
                let total: u64 = delta.iter().sum();
                if total > 0 {
                    let idle = delta[3] + delta[4];
                    let busy = (total - idle) as f64 / total as f64;
                    match name.strip_prefix("cpu").filter(|c| !c.is_empty()) {
                        Some(core) => {
                            o.gauge("fleetwatch_cpu_core_usage_ratio", &[("cpu", core)], busy)
                        }
                        None => o.gauge("fleetwatch_cpu_usage_ratio", &[], busy),
                    }
                }
            }
            self.prev_cpu.insert(name, ticks);
        }
    }

    fn memory(o: &mut Out<'_>) {
        let m = parse_meminfo(&read("/proc/meminfo"));
        for key in [
            "MemTotal",
            "MemFree",
            "MemAvailable",
            "Buffers",
            "Cached",
            "SwapTotal",
            "SwapFree",
        ] {
            if let Some(v) = m.get(key) {
                o.gauge(&format!("node_memory_{key}_bytes"), &[], *v);
            }
        }
        if let (Some(total), Some(avail)) = (m.get("MemTotal"), m.get("MemAvailable")) {
            if *total > 0.0 {
                o.gauge("fleetwatch_memory_usage_ratio", &[], 1.0 - avail / total);
            }
        }
        if let (Some(total), Some(free)) = (m.get("SwapTotal"), m.get("SwapFree")) {
            let ratio = if *total > 0.0 {
                1.0 - free / total
            } else {
                0.0
            };
            o.gauge("fleetwatch_swap_usage_ratio", &[], ratio);
        }
    }

    fn filesystems(o: &mut Out<'_>) {
        for (device, mount, fstype, ro) in parse_mounts(&read("/proc/mounts")) {
            let Some([size, free, avail, files, files_free]) = statvfs(&mount) else {
                continue;
            };
            if size == 0.0 {
                continue;
            }
            let l = [
                ("device", device.as_str()),
                ("fstype", fstype.as_str()),
                ("mountpoint", mount.as_str()),
            ];
            o.gauge("node_filesystem_size_bytes", &l, size);
            o.gauge("node_filesystem_free_bytes", &l, free);
            o.gauge("node_filesystem_avail_bytes", &l, avail);
            o.gauge("node_filesystem_files", &l, files);
            o.gauge("node_filesystem_files_free", &l, files_free);
            o.gauge("node_filesystem_readonly", &l, if ro { 1.0 } else { 0.0 });
            // Used as df shows it: of the space available to users.
            let used = size - free;
            let denom = used + avail;
            if denom > 0.0 {
                o.gauge("fleetwatch_filesystem_usage_ratio", &l, used / denom);
            }
        }
    }

    fn disks(o: &mut Out<'_>) {
        for (dev, [reads, rsect, writes, wsect, io_ms]) in parse_diskstats(&read("/proc/diskstats"))
        {
            let l = [("device", dev.as_str())];
            o.counter("node_disk_reads_completed_total", &l, reads as f64);
            o.counter("node_disk_read_bytes_total", &l, rsect as f64 * 512.0);
            o.counter("node_disk_writes_completed_total", &l, writes as f64);
            o.counter("node_disk_written_bytes_total", &l, wsect as f64 * 512.0);
            o.counter("node_disk_io_time_seconds_total", &l, io_ms as f64 / 1000.0);
        }
    }

    fn network(o: &mut Out<'_>) {
        const NAMES: [&str; 8] = [
            "node_network_receive_bytes_total",
            "node_network_receive_packets_total",
            "node_network_receive_errs_total",
            "node_network_receive_drop_total",
            "node_network_transmit_bytes_total",
            "node_network_transmit_packets_total",
            "node_network_transmit_errs_total",
            "node_network_transmit_drop_total",
        ];
        for (dev, values) in parse_net_dev(&read("/proc/net/dev")) {
            for (name, v) in NAMES.iter().zip(values) {
                o.counter(name, &[("device", dev.as_str())], v as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_kernel_text_and_skip_garbage() {
        let stat = "cpu  10 0 5 100 1 0 0 0 0 0\ncpu0 10 0 5 100 1 0 0 0 0 0\ncpu1 x\nprocs_running 3\nprocs_blocked 1\n";
        let cpus = parse_proc_stat_cpus(stat);
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[1].1[3], 100);
        assert_eq!(parse_proc_stat_procs(stat), (Some(3.0), Some(1.0)));
        let mem = parse_meminfo("MemTotal:       16 kB\nbroken line\nHugePages_Total:       0\n");
        assert_eq!(mem["MemTotal"], 16384.0);
        assert_eq!(mem["HugePages_Total"], 0.0);
        let ds = parse_diskstats("   8       0 sda 10 0 20 0 30 0 40 0 0 50 0 0 0\n 7 0 loop0 1 1 1 1 1 1 1 1 1 1 1\nshort\n");
        assert_eq!(ds, vec![("sda".to_string(), [10, 20, 30, 40, 50])]);
        let net = parse_net_dev(
            "Inter-|\n face |bytes\n  eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n lo: garbage\n",
        );
        assert_eq!(net, vec![("eth0".to_string(), [1, 2, 3, 4, 5, 6, 7, 8])]);
        assert_eq!(parse_loadavg_threads("0.1 0.2 0.3 2/345 999"), Some(345.0));
        assert_eq!(parse_loadavg_threads(""), None);
        let mounts = parse_mounts("/dev/sda1 / ext4 rw,relatime 0 0\nproc /proc proc rw 0 0\n/dev/sdb /mnt/my\\040disk xfs ro 0 0\n");
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].1, "/mnt/my disk");
        assert!(mounts[1].3);
    }

    #[test]
    fn collect_on_this_host() {
        let mut h = HostSource::new();
        let start = std::time::Instant::now();
        let first = h.collect(1_000);
        println!(
            "one host collection: {:?}, {} series",
            start.elapsed(),
            first.len()
        );
        let has = |v: &[SeriesSamples], n: &str| v.iter().any(|s| s.series.name == n);
        for name in [
            "node_cpu_seconds_total",
            "node_memory_MemTotal_bytes",
            "node_load1",
            "node_network_receive_bytes_total",
            "node_time_seconds",
            "node_processes_pids",
        ] {
            assert!(has(&first, name), "{name} missing");
        }
        assert!(first
            .iter()
            .any(|s| s.series.name == "node_filesystem_size_bytes"));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let second = h.collect(2_000);
        let usage = second
            .iter()
            .find(|s| s.series.name == "fleetwatch_cpu_usage_ratio")
            .expect("usage after two passes");
        assert!((0.0..=1.0).contains(&usage.samples[0].value));
        let f = h.facts();
        assert!(f.cpu_count >= 1 && f.memory_bytes > 0);
    }
}
