//! The backends' decapsulation program (`lb-ebpf/src/decap.rs`, `DECAP_OBJ`): loading it
//! under a pin directory of its own, its VIP set, its GUE port and its counters.

use std::{net::IpAddr, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Xdp,
};
use lb_common::encap::decap::{self, DecapConfig, Outcome};

use super::loader::{DECAP_OBJ, take_map};
use crate::error::LoadError;

/// The loaded decapsulation program and its maps.
pub struct Decap {
    ebpf: Ebpf,
    vips: HashMap<MapData, [u8; 16], u32>,
    stats: PerCpuArray<MapData, u64>,
}

impl Decap {
    /// Loads the program with its maps pinned under `dir` (a pin directory of its own), set to
    /// strip GUE on `gue_port`.
    ///
    /// # Errors
    /// The directory cannot be made, or the object does not load or verify.
    pub fn load(dir: &Path, gue_port: u16) -> Result<Self, LoadError> {
        std::fs::create_dir_all(dir).map_err(|source| LoadError::PinDir {
            path: dir.to_owned(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(DECAP_OBJ)?;
        let prog: &mut Xdp = ebpf
            .program_mut(decap::PROGRAM)
            .ok_or(LoadError::MissingProgram(decap::PROGRAM))?
            .try_into()
            .map_err(|source| LoadError::Program {
                what: decap::PROGRAM.into(),
                source,
            })?;
        prog.load().map_err(|source| LoadError::Program {
            what: format!("load {}", decap::PROGRAM),
            source,
        })?;
        let mut cfg: Array<MapData, DecapConfig> = take_map(&mut ebpf, decap::CFG)?;
        let c = DecapConfig {
            gue_port: gue_port.to_be_bytes(),
            _pad: [0; 2],
        };
        cfg.set(0, c, 0).map_err(|source| LoadError::Map {
            name: decap::CFG,
            source,
        })?;
        let vips = take_map(&mut ebpf, decap::VIPS)?;
        let stats = take_map(&mut ebpf, decap::STATS)?;
        Ok(Self { ebpf, vips, stats })
    }

    /// Makes `vips` the set of VIPs whose packets are stripped (the others go).
    ///
    /// # Errors
    /// A map update fails.
    pub fn set_vips(&mut self, vips: &[IpAddr]) -> Result<(), LoadError> {
        let want: std::collections::BTreeSet<[u8; 16]> =
            vips.iter().map(|v| lb_common::addr::from_ip(*v)).collect();
        let err = |source| LoadError::Map {
            name: decap::VIPS,
            source,
        };
        let stale: Vec<[u8; 16]> = self
            .vips
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.contains(k))
            .collect();
        for k in stale {
            self.vips.remove(&k).map_err(err)?;
        }
        for k in want {
            self.vips.insert(k, 1, 0).map_err(err)?;
        }
        Ok(())
    }

    /// Frames per outcome, summed over CPUs, in `Outcome` order.
    ///
    /// # Errors
    /// The counters cannot be read.
    pub fn counts(&self) -> Result<[u64; decap::ALL.len()], LoadError> {
        let mut out = [0u64; decap::ALL.len()];
        for o in decap::ALL {
            let per_cpu = self
                .stats
                .get(&(o as u32), 0)
                .map_err(|source| LoadError::Map {
                    name: decap::STATS,
                    source,
                })?;
            out[o as usize] = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The count of one outcome.
    ///
    /// # Errors
    /// As [`Self::counts`].
    pub fn count(&self, o: Outcome) -> Result<u64, LoadError> {
        Ok(self.counts()?[o as usize])
    }

    /// The XDP program (to attach, or to run with `BPF_PROG_TEST_RUN`).
    ///
    /// # Panics
    /// Never: [`Self::load`] checked that the object has it.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(decap::PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("loaded")
    }
}
