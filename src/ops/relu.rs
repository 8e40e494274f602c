//! ReLU as one parallel pass forward and one backward (`dx = dy · [y > 0]`). candle's built-in
//! backward builds a mask, casts it and multiplies: three full-size temporaries per activation.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{cpu_f32, with_f32, OutBuf};

const CHUNK: usize = 1 << 14;

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "kdet-relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = cpu_f32(s, l, "relu")?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, i)| {
                for (o, &v) in o.iter_mut().zip(i) {
                    *o = v.max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let g = with_f32(y, |yv| {
            with_f32(dy, |d| {
                let mut g = OutBuf::new(yv.len());
                g.slots()
                    .par_chunks_mut(CHUNK)
                    .zip(yv.par_chunks(CHUNK).zip(d.par_chunks(CHUNK)))
                    .for_each(|(g, (y, d))| {
                        for ((g, &v), &d) in g.iter_mut().zip(y).zip(d) {
                            g.write(if v > 0.0 { d } else { 0.0 });
                        }
                    });
                // SAFETY: the chunks cover the whole buffer.
                unsafe { g.assume_init() }
            })
        })??;
        Ok(Some(Tensor::from_vec(g, y.dims(), y.device())?))
    }
}

/// `max(x, 0)`; kdet's op on CPU f32, candle's elsewhere.
pub fn relu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_forward_and_backward() {
        let v: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.5).collect();
        let x = Var::from_vec(v, (10, 100), &Device::Cpu).unwrap();
        let r = Tensor::from_vec(
            (0..1000).map(|i| (i % 7) as f32).collect::<Vec<_>>(),
            (10, 100),
            &Device::Cpu,
        )
        .unwrap();
        let a = relu(&x).unwrap();
        let b = x.relu().unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
        let ga = (a * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &r).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            ga.get(&x).unwrap().to_vec2::<f32>().unwrap(),
            gb.get(&x).unwrap().to_vec2::<f32>().unwrap()
        );
    }
}
