//! The SVG plot of copy throughput against size.

use super::Report;
use crate::copy::Temp;
use crate::fmt_size;

impl Report {
    /// The SVG plot of copy throughput against size (hot buffers, one channel).
    pub fn svg(&self) -> Result<String, String> {
        use plotters::prelude::*;
        let series: Vec<(&str, usize, RGBColor)> = vec![
            ("cpu", 1, RGBColor(220, 50, 32)),
            ("dma-sync", 1, RGBColor(0, 90, 181)),
            ("dma-pipelined-8", 1, RGBColor(26, 133, 55)),
            ("dma-split-0.25", 1, RGBColor(153, 79, 0)),
        ];
        let points = |mode: &str, ch: usize| -> Vec<(f64, f64)> {
            let mut v: Vec<(f64, f64)> = self
                .copy_table
                .iter()
                .filter(|r| r.temp == Temp::Hot && r.mode == mode && r.channels == ch)
                .map(|r| ((r.size as f64).log2(), r.gb_per_s))
                .filter(|p| p.1.is_finite())
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            v
        };
        let all: Vec<(f64, f64)> = series.iter().flat_map(|(m, c, _)| points(m, *c)).collect();
        if all.is_empty() {
            return Err("no copy figures to plot".to_owned());
        }
        let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let xmax = all
            .iter()
            .map(|p| p.0)
            .fold(f64::NEG_INFINITY, f64::max)
            .max(xmin + 1.0);
        let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(0.1) * 1.1;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (800, 480)).into_drawing_area();
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let mut chart = ChartBuilder::on(&root)
                .caption(
                    "copy throughput, hot buffers, 1 channel (GB/s)",
                    ("sans-serif", 20),
                )
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(50)
                .build_cartesian_2d(xmin..xmax, 0.0..ymax)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("copy size")
                .y_desc("GB/s")
                .x_label_formatter(&|x| fmt_size(2f64.powf(*x).round() as usize))
                .draw()
                .map_err(|e| e.to_string())?;
            for (mode, ch, color) in &series {
                let pts = points(mode, *ch);
                if pts.is_empty() {
                    continue;
                }
                let c = *color;
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|e| e.to_string())?
                    .label(*mode)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(|e| e.to_string())?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }
}
