//! The device the networks run on, chosen once per process (`--device auto|cpu|cuda[:N]`) and
//! read wherever a network is built or loaded. The CPU is the default and the reference: its
//! training and inference use biodc's fused kernels and hand-written U-Net pass; on a GPU the
//! same networks run through candle's operations, so results agree within floating-point
//! tolerance, not bit for bit.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use std::sync::OnceLock;

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when biodc was built with `--features cuda` and one answers; else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<DeviceChoice> {
        Ok(match s {
            "auto" => DeviceChoice::Auto,
            "cpu" => DeviceChoice::Cpu,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => DeviceChoice::Cuda(
                    n.parse()
                        .with_context(|| format!("--device {s}: the GPU index is a number"))?,
                ),
                None => bail!("--device {s}: expected auto, cpu, cuda or cuda:N"),
            },
        })
    }
}

static CHOSEN: OnceLock<Device> = OnceLock::new();

/// Resolves `choice` to a device and makes it this process's; a second call must agree.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    let dev = resolve(choice)?;
    let chosen = CHOSEN.get_or_init(|| dev.clone());
    if name(chosen) != name(&dev) {
        bail!(
            "this process already runs on {}, not {}",
            name(chosen),
            name(&dev)
        );
    }
    Ok(dev)
}

fn resolve(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(cuda(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Cuda(n) => cuda(n),
    }
}

#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    // candle's error carries a backtrace; its first line says what happened.
    Device::new_cuda(n).map_err(|e| {
        let why = e.to_string();
        anyhow::anyhow!(
            "--device cuda:{n}: no CUDA GPU {n} answers ({}); check the driver and CUDA_VISIBLE_DEVICES",
            why.lines().next().unwrap_or("")
        )
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    bail!(
        "--device cuda:{n}: this biodc was built without CUDA; build one with scripts/build-cuda.sh"
    )
}

/// The device networks run on in this process: the one [`select`]ed, else the CPU.
pub fn current() -> Device {
    CHOSEN.get().cloned().unwrap_or(Device::Cpu)
}

/// `cpu` or `cuda:N`, as stage records note it.
pub fn name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Committing verbs that run networks: their stage records note the device.
pub const NETWORK_VERBS: [&str; 5] = ["pretrain", "embed", "train", "hunt", "monitor"];

/// What a `verb`'s stage record notes as its device: nothing on the CPU (as every record made
/// before the GPU path existed), else `cuda:N`.
pub fn recorded(verb: &str) -> Option<String> {
    let dev = name(&current());
    (NETWORK_VERBS.contains(&verb) && dev != "cpu").then_some(dev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_the_cpu_is_the_default() {
        assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "cuda:3".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(3)
        );
        assert!("tpu".parse::<DeviceChoice>().is_err());
        assert_eq!(name(&current()), "cpu");
        assert_eq!(name(&resolve(DeviceChoice::Cpu).unwrap()), "cpu");
        #[cfg(not(feature = "cuda"))]
        {
            assert_eq!(name(&resolve(DeviceChoice::Auto).unwrap()), "cpu");
            let e = format!("{:#}", resolve(DeviceChoice::Cuda(0)).unwrap_err());
            assert!(e.contains("scripts/build-cuda.sh"), "{e}");
        }
    }
}

/// Stack of the pool's threads when one of them runs a whole command (the main thread has
/// 8 MiB).
const POOL_STACK: usize = 16 << 20;

/// Runs `f` on one of rayon's threads rather than on the calling thread. Every parallel
/// operation (matrix products, the fused kernels) then starts on a pool thread, which shares
/// the work with the other and carries on, instead of handing it over and waking the caller
/// when it is done — thousands of such hand-overs per training step: MAE pretraining ran ~20 %
/// faster (docs/BENCHMARKS.md), the same bits. Call it before anything uses rayon (it sizes
/// the global pool's stacks); where the pool exists already or has one thread, `f` runs here.
/// `f` must not block its thread on work that waits for the pool (with a one-thread pool
/// nothing would run it).
pub fn on_a_pool_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(POOL_STACK)
        .build_global();
    if pool.is_err() || rayon::current_num_threads() < 2 {
        return f();
    }
    rayon::scope(|_| f())
}
