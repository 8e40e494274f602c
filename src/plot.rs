//! PNG charts with plotters, drawn into a pixel buffer and saved with `image` (no second image
//! stack). The bundled DejaVu Sans (src/assets, its licence beside it) is the font everywhere,
//! so charts look the same on every machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// DejaVu Sans, bundled so text renders without system fonts.
pub const FONT: &[u8] = include_bytes!("assets/DejaVuSans.ttf");

fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err<E: std::fmt::Display>(e: E) -> Error {
    Error::msg(format!("plotting failed: {e}"))
}

fn save_rgb(path: &Path, buf: Vec<u8>, w: u32, h: u32) -> Result<()> {
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::msg("plot buffer size"))?;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    img.save(path)
        .map_err(|e| Error::msg(format!("{}: {e}", path.display())))
}

/// One bar of a delta chart: label, value, and an optional confidence interval.
pub struct DeltaBar {
    pub label: String,
    pub delta: f64,
    pub ci: Option<(f64, f64)>,
}

/// Horizontal bars of deltas with CI whiskers around a zero line.
pub fn delta_chart(path: &Path, title: &str, bars: &[DeltaBar]) -> Result<()> {
    register();
    let (w, h) = (900u32, 120 + 28 * bars.len().max(1) as u32);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let lim = bars
            .iter()
            .flat_map(|b| {
                [
                    b.delta.abs(),
                    b.ci.map_or(0.0, |c| c.0.abs().max(c.1.abs())),
                ]
            })
            .filter(|v| v.is_finite())
            .fold(0.01f64, f64::max)
            .min(MAX_MAGNITUDE)
            * 1.15;
        let n = bars.len().max(1) as i32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(160)
            .build_cartesian_2d(-lim..lim, (0..n - 1).into_segmented())
            .map_err(plot_err)?;
        // Row i (top to bottom) is segment n-1-i; labels sit at segment centres.
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        let label_of = |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => labels
                .get((n - 1 - *i) as usize)
                .cloned()
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .y_labels(bars.len().max(1))
            .y_label_formatter(&label_of)
            .x_desc("B − A")
            .disable_y_mesh()
            .draw()
            .map_err(plot_err)?;
        for (i, b) in bars.iter().enumerate() {
            let y = n - 1 - i as i32;
            let colour = if b.ci.is_some_and(|c| c.0 > 0.0) {
                GREEN.mix(0.8)
            } else if b.ci.is_some_and(|c| c.1 < 0.0) {
                RED.mix(0.8)
            } else {
                BLUE.mix(0.6)
            };
            let (x0, x1) = (b.delta.min(0.0), b.delta.max(0.0));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [
                        (x0, SegmentValue::Exact(y)),
                        (x1, SegmentValue::Exact(y + 1)),
                    ],
                    colour.filled(),
                )))
                .map_err(plot_err)?;
            if let Some((lo, hi)) = b.ci {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![
                            (lo, SegmentValue::CenterOf(y)),
                            (hi, SegmentValue::CenterOf(y)),
                        ],
                        BLACK.stroke_width(2),
                    )))
                    .map_err(plot_err)?;
            }
        }
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Last)],
                BLACK,
            )))
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    save_rgb(path, buf, w, h)
}

/// No metric reaches this; a value beyond it (±1e308) is a fault, and an axis spanning it made
/// plotters' tick search run for more than ten minutes.
const MAX_MAGNITUDE: f64 = 1e15;

/// A point the axes can hold: both coordinates finite and within ±[`MAX_MAGNITUDE`].
fn plottable((x, y): (f64, f64)) -> bool {
    [x, y]
        .iter()
        .all(|v| v.is_finite() && v.abs() <= MAX_MAGNITUDE)
}

/// One panel of [`panels_chart`]: named series, horizontal reference lines (a teacher's AP),
/// and whether to mark each point (a series of a few evaluations is points, not a line).
pub struct Panel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    pub references: Vec<(String, f64)>,
    pub markers: bool,
}

/// A finite axis range around `values` (non-finite ones skipped, a flat or empty set widened),
/// padded by 5 %: never NaN, infinite or empty, whatever the values span.
pub fn axis_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    // Halved first, so the span of ±1e308 stays finite.
    let half = hi / 2.0 - lo / 2.0;
    let pad = (half * 0.1).max(1e-6 * lo.abs().max(1.0));
    ((lo - pad).max(f64::MIN), (hi + pad).min(f64::MAX))
}

/// Panels stacked in one PNG over a shared x range (`x_range`: the run's iterations).
pub fn panels_chart(
    path: &Path,
    x_desc: &str,
    x_range: (f64, f64),
    panels: &[Panel],
) -> Result<()> {
    register();
    let all = panels
        .iter()
        .flat_map(|p| p.series.iter().flat_map(|s| s.1.iter()));
    let absurd = all.filter(|&&q| !plottable(q)).count();
    if absurd > 0 {
        eprintln!(
            "warning: {}: left out {absurd} non-finite point(s) or of magnitude above {MAX_MAGNITUDE:e}",
            path.display()
        );
    }
    let (w, ph) = (900u32, 420u32);
    let h = ph * panels.len().max(1) as u32;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((panels.len().max(1), 1));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, x_desc, x_range, panel)?;
        }
        root.present().map_err(plot_err)?;
    }
    save_rgb(path, buf, w, h)
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    x_desc: &str,
    (x0, x1): (f64, f64),
    p: &Panel,
) -> Result<()> {
    // Points beyond ±MAX_MAGNITUDE are left out (an axis spanning ±1e308 stalls plotters'
    // tick search), said once by `panels_chart`.
    let ys = p
        .series
        .iter()
        .flat_map(|s| s.1.iter().filter(|&&q| plottable(q)).map(|q| q.1));
    let refs = p
        .references
        .iter()
        .filter(|r| plottable((0.0, r.1)))
        .map(|r| r.1);
    let (y0, y1) = axis_range(ys.chain(refs));
    let x1 = if x1 - x0 < 1e-12 { x0 + 1.0 } else { x1 };
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .draw()
        .map_err(plot_err)?;
    let finite = |pts: &[(f64, f64)]| -> Vec<(f64, f64)> {
        pts.iter().copied().filter(|&q| plottable(q)).collect()
    };
    for (i, (name, pts)) in p.series.iter().enumerate() {
        let c = Palette99::pick(i).to_rgba();
        let pts = finite(pts);
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        if p.markers {
            chart
                .draw_series(pts.iter().map(|&q| Circle::new(q, 4, c.filled())))
                .map_err(plot_err)?;
        }
    }
    for (j, (name, y)) in p
        .references
        .iter()
        .enumerate()
        .filter(|(_, r)| plottable((0.0, r.1)))
    {
        let c = Palette99::pick(p.series.len() + j).to_rgba();
        // Dashed: a reference, not a series of this run.
        let dashes = (0..40).map(|k| {
            let a = x0 + (x1 - x0) * k as f64 / 40.0;
            let b = x0 + (x1 - x0) * (k as f64 + 0.5) / 40.0;
            PathElement::new(vec![(a, *y), (b, *y)], c.stroke_width(2))
        });
        chart
            .draw_series(dashes)
            .map_err(plot_err)?
            .label(format!("{name} {y:.3}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

#[cfg(test)]
mod panel_tests {
    use super::*;

    #[test]
    fn axis_range_is_finite_whatever_the_values() {
        let (lo, hi) = axis_range([-1e308, 1e308, f64::NAN].into_iter());
        assert!(lo.is_finite() && hi.is_finite() && lo < hi);
        assert_eq!(axis_range(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = axis_range([0.5].into_iter());
        assert!(lo < 0.5 && hi > 0.5);
    }

    #[test]
    fn panels_leave_out_absurd_values() {
        let d = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        let panel = Panel {
            title: "m".into(),
            series: vec![("m".into(), vec![(0.0, 1.0), (1.0, 1e308), (2.0, -1e308)])],
            references: vec![("teacher".into(), 1e308)],
            markers: true,
        };
        panels_chart(&d.path().join("p.png"), "iteration", (0.0, 2.0), &[panel]).unwrap();
        assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    }

    #[test]
    fn absurd_values_do_not_stretch_the_axes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.png");
        let pts = vec![
            (0.0, 1.0),
            (1.0, 1e308),
            (2.0, -1e308),
            (3.0, 0.5),
            (4.0, f64::NAN),
        ];
        let t = std::time::Instant::now();
        let panel = Panel {
            title: "m".into(),
            series: vec![("m".into(), pts)],
            references: vec![],
            markers: false,
        };
        panels_chart(&p, "iteration", (0.0, 4.0), &[panel]).unwrap();
        assert!(p.is_file());
        let bars = [DeltaBar {
            label: "x".into(),
            delta: 1e308,
            ci: Some((-f64::INFINITY, 1e308)),
        }];
        delta_chart(&d.path().join("d.png"), "d", &bars).unwrap();
        assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    }
}
