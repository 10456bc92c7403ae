//! Loading the kernel programs against the pinned maps, and attaching or adopting their links.
//!
//! Adoption: a hook whose link is already pinned is not attached again; instead the pinned
//! link's program is swapped in place for the freshly loaded one (`BPF_LINK_UPDATE`), whatever
//! build put the old program there. So a restart or an upgrade never leaves two copies of a
//! program on a hook and never leaves a hook empty.
//!
//! A pinned link that cannot be updated — its target is gone (cgroup or interface deleted), it
//! points at another cgroup, or it is of another link or program type (the kernel refuses the
//! update with `EINVAL`) — is replaced make-before-break: the new link is attached and pinned
//! beside it, then renamed over the old pin, which drops the old link (it is ours: it lives
//! under our root). Only in that last case do two programs share a hook, for the moment
//! between the attach and the rename; the hook is never empty.

use std::{
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::Path,
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{LinkOrder, SchedClassifier, TcAttachType, links::FdLink, tc::TcAttachOptions},
};
use ztunnel_common::maps::{
    ALL_MAPS, LOG_RING_BUFFER_MAP, MAX_PODS, MAX_WORKLOADS, PODS_MAP, STATS_MAP, WORKLOADS_MAP,
    programs,
};

use super::{
    EBPF_OBJECT, EbpfError, PinLayout,
    bpf_syscall::{
        self, ATTACH_TYPE_TCX_INGRESS, CgroupAttachType, LINK_TYPE_CGROUP, LINK_TYPE_TCX,
    },
    logs::TracingLog,
    map_layout::{IncompatibleMaps, check_pinned_maps},
};
use crate::inpod::netns::Netns;

/// The cgroup programs, in the order a connection meets them; then the bind guards.
pub const CGROUP_PROGRAMS: [&str; 8] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SOCKOPS,
    programs::GETSOCKOPT,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::BIND4,
    programs::BIND6,
];

/// What happened to a hook when attaching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOutcome {
    /// No pinned link existed: a new link was attached and pinned.
    Attached,
    /// The pinned link was kept and now runs the newly loaded program.
    Adopted,
    /// A pinned link was stale (target gone or different); it was removed and replaced.
    Replaced,
}

/// Sizes of the maps that grow with the number of pods; they apply only when a map is created
/// (a pinned map keeps the size it was created with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// Capacity of `pods` and `stats`: how many pods the node can enroll.
    pub max_pods: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self { max_pods: MAX_PODS }
    }
}

impl MapSizes {
    /// Capacity of `workloads`: as many addresses per pod as the built-in sizes allow.
    pub fn max_workloads(&self) -> u32 {
        self.max_pods.saturating_mul(MAX_WORKLOADS / MAX_PODS)
    }
}

/// The kernel programs loaded against the maps pinned under one root.
pub struct LoadedPrograms {
    ebpf: Ebpf,
    layout: PinLayout,
    recreated_maps: Vec<&'static str>,
}

impl LoadedPrograms {
    /// [`LoadedPrograms::load_with`] the built-in map sizes, refusing pinned maps of another
    /// layout (for the CNI plugin and the CLI; only the daemon recreates maps).
    pub fn load(layout: &PinLayout) -> Result<Self, EbpfError> {
        Self::load_with(layout, MapSizes::default(), IncompatibleMaps::Refuse)
    }

    /// Creates the pin directories, loads the object (creating and pinning any map that is not
    /// pinned yet, with `sizes`; reusing those that are, after applying `incompatible` to those
    /// of another layout) and loads every program into the kernel. Minimum kernel 6.6 (TCX; the
    /// other hooks need 5.15).
    pub fn load_with(
        layout: &PinLayout,
        sizes: MapSizes,
        incompatible: IncompatibleMaps,
    ) -> Result<Self, EbpfError> {
        layout.create()?;
        let recreated_maps = check_pinned_maps(layout, &ALL_MAPS, incompatible)?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(PODS_MAP, sizes.max_pods)
            .map_max_entries(STATS_MAP, sizes.max_pods)
            .map_max_entries(WORKLOADS_MAP, sizes.max_workloads());
        let paths: Vec<(&str, std::path::PathBuf)> = ALL_MAPS
            .iter()
            .chain([LOG_RING_BUFFER_MAP].iter())
            .map(|name| (*name, layout.map(name)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|source| EbpfError::Load {
            root: layout.root().to_owned(),
            source: Box::new(source),
        })?;
        for name in CGROUP_PROGRAMS.iter().chain([programs::TC_INGRESS].iter()) {
            let program = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram(name))?;
            let result = match program {
                aya::programs::Program::CgroupSockAddr(p) => p.load(),
                aya::programs::Program::SockOps(p) => p.load(),
                aya::programs::Program::CgroupSockopt(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => return Err(EbpfError::MissingProgram(name)),
            };
            result.map_err(|source| EbpfError::LoadProgram {
                program: name,
                source: Box::new(source),
            })?;
        }
        Ok(Self {
            ebpf,
            layout: layout.clone(),
            recreated_maps,
        })
    }

    /// Maps that were pinned with another build's layout and were created afresh by this load:
    /// the caller rebuilds their entries.
    pub fn recreated_maps(&self) -> &[&'static str] {
        &self.recreated_maps
    }

    /// The pin layout these programs were loaded for.
    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Starts forwarding kernel log records into `tracing`; call once, from the daemon.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<TracingLog>> {
        match aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, TracingLog) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::warn!(%error, "kernel log forwarding unavailable");
                None
            }
        }
    }

    /// Attaches (or adopts) the links of every program in [`CGROUP_PROGRAMS`] on the cgroup-v2
    /// directory `cgroup`. Minimum kernel 5.15.
    pub fn attach_cgroup_programs(
        &mut self,
        cgroup: &Path,
    ) -> Result<Vec<(&'static str, AttachOutcome)>, EbpfError> {
        let cgroup_file = File::open(cgroup).map_err(|source| EbpfError::Cgroup {
            cgroup: cgroup.to_owned(),
            source,
        })?;
        let cgroup_id = cgroup_id(cgroup)?;
        let mut outcomes = Vec::new();
        for name in CGROUP_PROGRAMS {
            let pin = self.layout.cgroup_link(name);
            let mut outcome = AttachOutcome::Attached;
            if pin.exists() {
                let hook = LinkTarget {
                    link_type: LINK_TYPE_CGROUP,
                    attach_type: cgroup_attach_type(name)? as u32,
                    target: cgroup_id,
                };
                match self.adopt(&pin, name, hook)? {
                    true => {
                        outcomes.push((name, AttachOutcome::Adopted));
                        continue;
                    }
                    false => outcome = AttachOutcome::Replaced,
                }
            }
            let link = self.attach_cgroup_program(name, &cgroup_file, cgroup)?;
            pin_replacing(&pin, |path| bpf_syscall::pin(&link, path))?;
            outcomes.push((name, outcome));
        }
        Ok(outcomes)
    }

    fn attach_cgroup_program(
        &mut self,
        name: &'static str,
        cgroup_file: &File,
        cgroup: &Path,
    ) -> Result<OwnedFd, EbpfError> {
        let attach_type = cgroup_attach_type(name)?;
        let program = self
            .ebpf
            .program(name)
            .ok_or(EbpfError::MissingProgram(name))?;
        let program_fd = program.fd().map_err(|source| EbpfError::LoadProgram {
            program: name,
            source: Box::new(source),
        })?;
        bpf_syscall::create_cgroup_link(&program_fd.as_fd(), cgroup_file, attach_type).map_err(
            |source| EbpfError::Io {
                action: format!("attach {name} to cgroup {}", cgroup.display()),
                source,
            },
        )
    }

    /// Swaps the program of the link pinned at `pin` if it still targets `target` and the
    /// kernel accepts the new program for it. Returns whether the link was adopted; if not, the
    /// caller replaces the pin (see the module documentation).
    fn adopt(&self, pin: &Path, name: &'static str, hook: LinkTarget) -> Result<bool, EbpfError> {
        let io_error = |action: &str, source| EbpfError::Io {
            action: format!("{action} {}", pin.display()),
            source,
        };
        let link = bpf_syscall::open_pin(pin).map_err(|e| io_error("open pinned link", e))?;
        let info = bpf_syscall::link_info(&link).map_err(|e| io_error("read pinned link", e))?;
        if info.link_type == hook.link_type
            && info.attach_type == hook.attach_type
            && info.target == hook.target
            && hook.target != 0
        {
            let program = self
                .ebpf
                .program(name)
                .ok_or(EbpfError::MissingProgram(name))?;
            let program_fd = program.fd().map_err(|source| EbpfError::LoadProgram {
                program: name,
                source: Box::new(source),
            })?;
            match bpf_syscall::replace_link_program(&link, &program_fd.as_fd()) {
                Ok(()) => {
                    tracing::debug!(pin = %pin.display(), link_id = info.id, previous_program_id = info.program_id, "pinned link now runs this build's program");
                    return Ok(true);
                }
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(pin = %pin.display(), link_id = info.id, previous_program_id = info.program_id, %error, "the pinned link runs a program of another type (an incompatible build?); replacing the link");
                    return Ok(false);
                }
                Err(error) => return Err(io_error("replace the program of pinned link", error)),
            }
        }
        tracing::info!(pin = %pin.display(), ?info, expected = ?hook, "replacing a pinned link that is stale or on another hook");
        Ok(false)
    }

    /// Attaches (or adopts) the TC ingress program on `interface` inside `netns` with TCX and
    /// pins the link for the pod `netns_cookie`. Returns the interface index. Minimum kernel 6.6.
    pub fn attach_tc_ingress(
        &mut self,
        netns: &Netns,
        interface: &str,
        netns_cookie: u64,
    ) -> Result<(u32, AttachOutcome), EbpfError> {
        let pin_dir = self.layout.pod_dir(netns_cookie);
        std::fs::create_dir_all(&pin_dir).map_err(|source| EbpfError::Io {
            action: format!("create {}", pin_dir.display()),
            source,
        })?;
        let pin = self.layout.pod_tc_link(netns_cookie);
        let interface_owned = interface.to_owned();
        let ifindex = netns
            .run(move || interface_index(&interface_owned))
            .map_err(|source| EbpfError::Io {
                action: format!(
                    "find interface {interface} in netns {}",
                    netns.path().display()
                ),
                source,
            })?;
        let mut outcome = AttachOutcome::Attached;
        if pin.exists() {
            let hook = LinkTarget {
                link_type: LINK_TYPE_TCX,
                attach_type: ATTACH_TYPE_TCX_INGRESS,
                target: u64::from(ifindex),
            };
            if self.adopt(&pin, programs::TC_INGRESS, hook)? {
                return Ok((ifindex, AttachOutcome::Adopted));
            }
            outcome = AttachOutcome::Replaced;
        }
        let name = programs::TC_INGRESS;
        let target = format!("{interface} in netns {}", netns.path().display());
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram(name))?
            .try_into()
            .map_err(|source| EbpfError::LoadProgram {
                program: name,
                source: Box::new(source),
            })?;
        let interface_owned = interface.to_owned();
        let link: FdLink = netns
            .run(move || {
                let id = program
                    .attach_with_options(
                        &interface_owned,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::default()),
                    )
                    .map_err(std::io::Error::other)?;
                let link = program.take_link(id).map_err(std::io::Error::other)?;
                FdLink::try_from(link).map_err(std::io::Error::other)
            })
            .map_err(|source| EbpfError::Io {
                action: format!("attach {name} to {target}"),
                source,
            })?;
        pin_replacing(&pin, |path| {
            link.pin(path).map(drop).map_err(std::io::Error::other)
        })?;
        Ok((ifindex, outcome))
    }
}

/// The hook a pinned link must be on to be adopted.
#[derive(Debug, Clone, Copy)]
struct LinkTarget {
    link_type: u32,
    attach_type: u32,
    /// Cgroup id or ifindex.
    target: u64,
}

/// The cgroup hook of one of [`CGROUP_PROGRAMS`].
fn cgroup_attach_type(name: &'static str) -> Result<CgroupAttachType, EbpfError> {
    Ok(match name {
        programs::CONNECT4 => CgroupAttachType::Inet4Connect,
        programs::CONNECT6 => CgroupAttachType::Inet6Connect,
        programs::SOCKOPS => CgroupAttachType::SockOps,
        programs::GETSOCKOPT => CgroupAttachType::GetSockopt,
        programs::GETPEERNAME4 => CgroupAttachType::Inet4GetPeerName,
        programs::GETPEERNAME6 => CgroupAttachType::Inet6GetPeerName,
        programs::BIND4 => CgroupAttachType::Inet4Bind,
        programs::BIND6 => CgroupAttachType::Inet6Bind,
        _ => return Err(EbpfError::MissingProgram(name)),
    })
}

/// Pins a new link at `pin` through `pin_at`, replacing whatever is pinned there in one step:
/// pinned beside it first, then renamed over it (bpffs renames atomically). Dropping the old
/// pin detaches the old link unless something else holds it.
fn pin_replacing(
    pin: &Path,
    pin_at: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), EbpfError> {
    let io_error = |action: &str, source| EbpfError::Io {
        action: format!("{action} {}", pin.display()),
        source,
    };
    let beside = replacement_pin(pin);
    // Left over by a daemon that died between the two steps: its link must not stay attached.
    match std::fs::remove_file(&beside) {
        Ok(()) => tracing::info!(pin = %beside.display(), "removed an unfinished replacement pin"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error("remove the unfinished replacement of", error)),
    }
    pin_at(&beside).map_err(|error| io_error("pin the new link beside", error))?;
    std::fs::rename(&beside, pin).map_err(|error| io_error("move the new link pin over", error))
}

/// Where a replacement for `pin` is pinned before it is renamed over it.
fn replacement_pin(pin: &Path) -> std::path::PathBuf {
    let mut name = pin.file_name().unwrap_or_default().to_owned();
    // bpffs refuses names with a dot.
    name.push("-replacing");
    pin.with_file_name(name)
}

/// Removes the pinned cgroup links under `layout` (detaching their programs); returns how many
/// there were. Used when the node runs iptables capture instead.
pub fn remove_cgroup_links(layout: &PinLayout) -> Result<usize, EbpfError> {
    let mut removed = 0;
    for name in CGROUP_PROGRAMS {
        let pin = layout.cgroup_link(name);
        match std::fs::remove_file(&pin) {
            Ok(()) => removed += 1,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EbpfError::Io {
                    action: format!("remove pinned link {}", pin.display()),
                    source,
                });
            }
        }
    }
    Ok(removed)
}

/// Whether the running kernel has TCX (6.6+), read from `uname -r`; the TC ingress hook needs it.
pub fn kernel_has_tcx() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .trim()
        .split(['.', '-'])
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let major = numbers.next().unwrap_or(0);
    let minor = numbers.next().unwrap_or(0);
    (major, minor) >= (6, 6)
}

/// Removes a pod's pinned links (detaching them) and its pin directory.
pub fn remove_pod_pins(layout: &PinLayout, netns_cookie: u64) -> Result<(), EbpfError> {
    let dir = layout.pod_dir(netns_cookie);
    let pin = layout.pod_tc_link(netns_cookie);
    let beside = replacement_pin(&pin);
    for (path, is_dir) in [(pin, false), (beside, false), (dir, true)] {
        let result = if is_dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(EbpfError::Io {
                    action: format!("remove {}", path.display()),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The cgroup-v2 id of a directory (its inode number), as cgroup links report it.
fn cgroup_id(cgroup: &Path) -> Result<u64, EbpfError> {
    use std::os::unix::fs::MetadataExt;
    let error = |source| EbpfError::Cgroup {
        cgroup: cgroup.to_owned(),
        source,
    };
    let mut path = cgroup.join("cgroup.procs");
    if !path.exists() {
        path = cgroup.to_owned();
        return Err(error(std::io::Error::other(format!(
            "{} has no cgroup.procs: not a cgroup-v2 directory (mount cgroup2 or pass --cgroup)",
            path.display()
        ))));
    }
    Ok(std::fs::metadata(cgroup).map_err(error)?.ino())
}

/// The index of `interface` in the calling thread's netns.
/// The index of `interface` in the calling thread's netns.
pub fn interface_index(interface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(index)
    }
}
