//! Checkpoints as safetensors bytes: deterministic (sorted names, no metadata), so the same
//! weights always give the same object hash.

use super::mae::{Mae, MaeConfig};
use anyhow::{anyhow, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Name of the fixed embedding projection inside a checkpoint.
pub const PROJECTION: &str = "biodc.embed_projection";

pub fn to_safetensors(tensors: &BTreeMap<String, Tensor>) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
        .map_err(|e| anyhow!("safetensors: {e}"))
}

pub fn from_safetensors(bytes: &[u8], dev: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load_buffer(bytes, dev).map_err(|e| anyhow!("safetensors: {e}"))
}

/// The weights of `mae` (and its embedding projection) as safetensors bytes.
pub fn weights(mae: &Mae) -> Result<Vec<u8>> {
    let mut t: BTreeMap<String, Tensor> = mae
        .params
        .vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    if let Some(p) = mae.projection() {
        t.insert(PROJECTION.into(), p.clone());
    }
    to_safetensors(&t)
}

/// An MAE of architecture `cfg` with the weights in `bytes`.
pub fn load(cfg: &MaeConfig, bytes: &[u8], dev: &Device) -> Result<Mae> {
    let mae = Mae::new(cfg, 0, dev)?;
    mae.params.load(&from_safetensors(bytes, dev)?)?;
    Ok(mae)
}

/// The device to run on: CPU, or the first CUDA GPU when built with `--features cuda` and asked.
pub fn device(cuda: bool) -> Result<Device> {
    if cuda {
        #[cfg(feature = "cuda")]
        return Ok(Device::new_cuda(0)?);
        #[cfg(not(feature = "cuda"))]
        anyhow::bail!("this biodc was built without the `cuda` feature");
    }
    Ok(Device::Cpu)
}
