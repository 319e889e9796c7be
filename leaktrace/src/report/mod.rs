//! Renderers, each a leaf that imports what it renders and nothing imports but the trace
//! (and `main`, which opens `top`'s screen):
//! report.json's structs (`schema`) and the text report (`text`); the live line each
//! interval and the summary (`live`); the goroutine and memory snapshot (`dump`) and the goroutines proven leaked (`proven`); every
//! probe record as a JSON line (`events`); pprof profiles (`pprof`); histograms over time as
//! an HdrHistogram interval log (`hlog`); the Prometheus text format (`metrics`) and the
//! endpoint that serves it (`prometheus`); the report as a page with plots (`html`); the
//! full-screen view of `leaktrace top` (`top`); the files `record -o` writes (`exports`); and
//! what `leaktrace agent` serves about its targets (`agent`).

pub mod agent;
pub mod dump;
pub mod events;
pub mod exports;
pub mod hlog;
pub mod html;
pub mod live;
pub mod metrics;
pub mod pprof;
pub mod prometheus;
pub mod proven;
pub mod schema;
pub mod text;
pub mod top;
