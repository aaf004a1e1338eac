//! The U-Net as an ONNX graph (opset 17), built with the `onnx-protobuf` crate's message types:
//! what BioImage.IO consumers (bioimageio.core, deepImageJ, ilastik) run.
//!
//! The graph is the inference forward of [`super::unet::UNet`] in NCHW: per level two
//! (3×3 Conv without bias, group norm, Relu); `Conv` 2×2 stride 2 down (the weights stored as
//! (out, 4·in, 1, 1) over space-to-depth are the (out, in, 2, 2) kernel); up a 1×1 `Conv` to 4×
//! the channels then `DepthToSpace` in CRD mode (channels ordered (c, dy, dx), as biodc's
//! depth-to-space); `Concat` of upsampled and skip on the channel axis; a 1×1 `Conv` head.
//! Group norm is written as Reshape (N, G, −1) → `InstanceNormalization` → Reshape → per-channel
//! scale and shift: `GroupNormalization` exists only from opset 18 and changed meaning in 21.
//! Dropout is absent (inference). Input `input` (N, 1, H, W), standardised per image; output
//! `logits` (N, 1, H, W).

use super::unet::{groups, UNet};
use anyhow::{Context, Result};
use candle_core::Tensor;
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The ONNX opset the graph uses.
pub const OPSET: i64 = 17;

/// Builds a graph node by node, naming intermediate values.
struct Builder<'a> {
    net: &'a UNet,
    graph: GraphProto,
    next: usize,
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn string_attr(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

/// A float tensor input/output of shape (batch, 1, side, side), the batch dynamic.
fn image_value(name: &str, side: usize) -> ValueInfoProto {
    let dim = |d: Result<i64, &str>| {
        let mut x = tensor_shape_proto::Dimension::new();
        match d {
            Ok(v) => x.set_dim_value(v),
            Err(p) => x.set_dim_param(p.into()),
        }
        x
    };
    let mut shape = TensorShapeProto::new();
    shape.dim = vec![
        dim(Err("batch")),
        dim(Ok(1)),
        dim(Ok(side as i64)),
        dim(Ok(side as i64)),
    ];
    let mut tensor = type_proto::Tensor::new();
    tensor.elem_type = DataType::FLOAT as i32;
    tensor.shape = Some(shape).into();
    let mut t = TypeProto::new();
    t.set_tensor_type(tensor);
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(t).into();
    v
}

impl Builder<'_> {
    fn fresh(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}_{}", self.next)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        let mut n = NodeProto::new();
        n.op_type = op.into();
        n.name = out.clone();
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = vec![out.clone()];
        n.attribute = attrs;
        self.graph.node.push(n);
        out
    }

    fn constant_f32(&mut self, name: &str, dims: &[usize], values: Vec<f32>) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.data_type = DataType::FLOAT as i32;
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(t);
        name.into()
    }

    fn constant_i64(&mut self, name: &str, values: &[i64]) -> String {
        let mut t = TensorProto::new();
        t.name = name.into();
        t.dims = vec![values.len() as i64];
        t.data_type = DataType::INT64 as i32;
        t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(t);
        name.into()
    }

    /// The network's tensor `name` as an initializer of shape `dims` (same element count).
    fn weight(&mut self, name: &str, dims: &[usize]) -> Result<String> {
        let var = self
            .net
            .params
            .vars
            .get(name)
            .with_context(|| format!("the U-Net has no tensor {name}"))?;
        let t: &Tensor = var.as_tensor();
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        anyhow::ensure!(
            values.len() == dims.iter().product::<usize>(),
            "tensor {name} has {} values, not {dims:?}",
            values.len()
        );
        Ok(self.constant_f32(name, dims, values))
    }

    /// 3×3 convolution, group norm, ReLU: the `{name}` block with `inp` → `out` channels.
    fn conv_norm(&mut self, x: &str, name: &str, inp: usize, out: usize) -> Result<String> {
        let w = self.weight(&format!("{name}.weight"), &[out, inp, 3, 3])?;
        let y = self.node(
            "Conv",
            &[x, &w],
            vec![
                ints_attr("kernel_shape", &[3, 3]),
                ints_attr("pads", &[1, 1, 1, 1]),
            ],
        );
        let g = groups(out);
        let grouped = self.constant_i64(&format!("{name}.groups_shape"), &[0, g as i64, -1]);
        let ones = self.constant_f32(&format!("{name}.groups_one"), &[g], vec![1.0; g]);
        let zeros = self.constant_f32(&format!("{name}.groups_zero"), &[g], vec![0.0; g]);
        let shape = self.node("Shape", &[&y], vec![]);
        let r = self.node("Reshape", &[&y, &grouped], vec![]);
        let n = self.node(
            "InstanceNormalization",
            &[&r, &ones, &zeros],
            vec![float_attr("epsilon", 1e-5)],
        );
        let back = self.node("Reshape", &[&n, &shape], vec![]);
        let gamma = self.weight(&format!("{name}.norm.weight"), &[out, 1, 1])?;
        let beta = self.weight(&format!("{name}.norm.bias"), &[out, 1, 1])?;
        let scaled = self.node("Mul", &[&back, &gamma], vec![]);
        let shifted = self.node("Add", &[&scaled, &beta], vec![]);
        Ok(self.node("Relu", &[&shifted], vec![]))
    }

    /// A convolution with bias: `k`×`k` with stride `k` (k = 1 or the 2×2 downsampling).
    fn conv(&mut self, x: &str, name: &str, inp: usize, out: usize, k: usize) -> Result<String> {
        let w = self.weight(&format!("{name}.weight"), &[out, inp, k, k])?;
        let b = self.weight(&format!("{name}.bias"), &[out])?;
        Ok(self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ints_attr("kernel_shape", &[k as i64, k as i64]),
                ints_attr("strides", &[k as i64, k as i64]),
            ],
        ))
    }
}

/// The inference graph of `net` as a serialised ONNX model.
pub fn unet_to_onnx(net: &UNet, doc: &str) -> Result<Vec<u8>> {
    let cfg = &net.cfg;
    let ch = &cfg.channels;
    let mut b = Builder {
        net,
        graph: GraphProto::new(),
        next: 0,
    };
    b.graph.name = "biodc-unet".into();
    b.graph.input.push(image_value("input", cfg.window));
    let mut y = "input".to_string();
    let mut skips = Vec::new();
    for l in 0..ch.len() {
        let inp = if l == 0 {
            cfg.inputs
        } else {
            y = b.conv(&y, &format!("down.{l}"), ch[l - 1], ch[l], 2)?;
            ch[l]
        };
        y = b.conv_norm(&y, &format!("enc.{l}.0"), inp, ch[l])?;
        y = b.conv_norm(&y, &format!("enc.{l}.1"), ch[l], ch[l])?;
        skips.push(y.clone());
    }
    skips.pop();
    for l in (0..ch.len() - 1).rev() {
        let skip = skips.pop().expect("one skip per decoder level");
        let u = b.conv(&y, &format!("up.{l}"), ch[l + 1], 4 * ch[l], 1)?;
        let u = b.node(
            "DepthToSpace",
            &[&u],
            vec![int_attr("blocksize", 2), string_attr("mode", "CRD")],
        );
        let cat = b.node("Concat", &[&u, &skip], vec![int_attr("axis", 1)]);
        y = b.conv_norm(&cat, &format!("dec.{l}.0"), 2 * ch[l], ch[l])?;
        y = b.conv_norm(&y, &format!("dec.{l}.1"), ch[l], ch[l])?;
    }
    b.conv(&y, "head", ch[0], 1, 1)?;
    // The head's output under the name the graph's output declares.
    b.graph.node.last_mut().expect("the head is a node").output = vec!["logits".into()];
    b.graph.output.push(image_value("logits", cfg.window));
    let mut model = ModelProto::new();
    model.ir_version = 8;
    model.producer_name = "biodc".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    model.doc_string = doc.into();
    let mut opset = OperatorSetIdProto::new();
    opset.domain = String::new();
    opset.version = OPSET;
    model.opset_import = vec![opset];
    model.graph = Some(b.graph).into();
    Ok(model.write_to_bytes()?)
}
