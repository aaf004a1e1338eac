//! Numbers in manifests that may be NaN. JSON has no NaN: serde_json writes it as `null`, and
//! a plain `f64` field then fails to read back. These readers take `null` as NaN, so every
//! version that was ever committed (including those written before this existed) reads back.

use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;

/// A number that reads `null` as NaN.
#[derive(Deserialize)]
#[serde(transparent)]
struct Lenient(Option<f64>);

impl Lenient {
    fn get(self) -> f64 {
        self.0.unwrap_or(f64::NAN)
    }
}

pub fn f64<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Lenient::deserialize(d)?.get())
}

pub fn vec_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Lenient>::deserialize(d)?
        .into_iter()
        .map(Lenient::get)
        .collect())
}

pub fn map_f64<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    Ok(BTreeMap::<String, Lenient>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| (k, v.get()))
        .collect())
}

/// A loss curve: (step, loss) pairs.
pub fn curve<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u64, f32)>, D::Error> {
    Ok(Vec::<(u64, Lenient)>::deserialize(d)?
        .into_iter()
        .map(|(s, v)| (s, v.get() as f32))
        .collect())
}

/// An optional (Z, Y, X) triple.
pub fn triple<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[f64; 3]>, D::Error> {
    Ok(Option::<[Lenient; 3]>::deserialize(d)?.map(|t| t.map(Lenient::get)))
}

#[cfg(test)]
mod tests {
    use crate::version::{ModelManifest, PatchSet};

    #[test]
    fn nan_written_as_null_reads_back_as_nan() {
        let text = r#"{"name":"mae","kind":"mae","architecture":{},"checkpoint":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262","training":{},"loss_curve":[[1,null],[2,0.5]],"metrics":{"held_out_loss_start":null,"x":1.0}}"#;
        let m: ModelManifest = serde_json::from_str(text).unwrap();
        assert!(m.metrics["held_out_loss_start"].is_nan());
        assert!(m.loss_curve[0].1.is_nan());
        // …and is written as null again.
        let again = serde_json::to_string(&m).unwrap();
        assert!(again.contains(r#""held_out_loss_start":null"#), "{again}");
        let s: PatchSet =
            serde_json::from_str(r#"{"name":"s","method":"m","patches":["a"],"scores":[null]}"#)
                .unwrap();
        assert!(s.scores[0].is_nan());
    }
}
