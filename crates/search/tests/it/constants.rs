//! The strategy constants equal the formula table (Hansen 2016 Table 1; Ros & Hansen 2008). Golden values were
//! computed independently from the formulas in double precision (Python `math`).

use evomerge_search::{CmaParams, SepCmaParams};

fn close(name: &str, n: usize, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-13 * want.abs().max(1.0),
        "n={n} {name}: got {got:e}, want {want:e}"
    );
}

struct Full {
    n: usize,
    lambda: usize,
    mu: usize,
    mu_eff: f64,
    mu_eff_minus: f64,
    c1: f64,
    c_mu: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    chi_n: f64,
    w_first: f64,
    w_last: f64,
    w_sum: f64,
}

#[test]
fn full_cma_constants_match_the_formula_table() {
    let table = [
        Full {
            n: 2,
            lambda: 6,
            mu: 3,
            mu_eff: 2.0286114646100617,
            mu_eff_minus: 2.4319189586928855,
            c1: 0.1548153998964136,
            c_mu: 0.057859085071916304,
            c_sigma: 0.44620498737831715,
            d_sigma: 1.4462049873783172,
            c_c: 0.6245545390268264,
            chi_n: 1.254272742818995,
            w_first: 0.6370425712412168,
            w_last: -1.1559817781589212,
            w_sum: -1.2073236548406017,
        },
        Full {
            n: 10,
            lambda: 10,
            mu: 5,
            mu_eff: 3.1672992814107026,
            mu_eff_minus: 3.989115019106924,
            c1: 0.015283824524751714,
            c_mu: 0.02015428276120838,
            c_sigma: 0.2844285879463675,
            d_sigma: 1.2844285879463675,
            c_c: 0.29499038303562225,
            chi_n: 3.0847265651690123,
            w_first: 0.45627264690340597,
            w_last: -0.5862218287788354,
            w_sum: -0.7583412769304296,
        },
        Full {
            n: 100,
            lambda: 17,
            mu: 8,
            mu_eff: 5.096188878610173,
            mu_eff_minus: 6.685960650512333,
            c1: 0.000194802926953566,
            c_mu: 0.0006326032318374701,
            c_sigma: 0.06445444616102276,
            d_sigma: 1.0644544461610228,
            c_c: 0.03891342005784185,
            chi_n: 9.97504761904762,
            w_first: 0.3150958752676225,
            w_last: -0.2661486835611777,
            w_sum: -0.3079385579294911,
        },
    ];
    for t in table {
        let p = CmaParams::new(t.n, None).unwrap();
        let n = t.n;
        assert_eq!((p.dim, p.lambda, p.mu), (n, t.lambda, t.mu));
        close("mu_eff", n, p.mu_eff, t.mu_eff);
        close("mu_eff_minus", n, p.mu_eff_minus, t.mu_eff_minus);
        close("c1", n, p.c1, t.c1);
        close("c_mu", n, p.c_mu, t.c_mu);
        close("c_sigma", n, p.c_sigma, t.c_sigma);
        close("d_sigma", n, p.d_sigma, t.d_sigma);
        close("c_c", n, p.c_c, t.c_c);
        close("chi_n", n, p.chi_n, t.chi_n);
        assert_eq!(p.c_m, 1.0);
        assert_eq!(p.weights.len(), t.lambda);
        close("w_1", n, p.weights[0], t.w_first);
        close("w_lambda", n, p.weights[t.lambda - 1], t.w_last);
        close("sum w", n, p.weights.iter().sum(), t.w_sum);
        // positive weights sum to 1, decrease, and are exactly the first mu
        let positive: f64 = p.weights.iter().filter(|w| **w > 0.0).sum();
        close("sum w+", n, positive, 1.0);
        assert!(p.weights.windows(2).all(|w| w[0] > w[1]), "n={n}");
        assert_eq!(p.weights.iter().filter(|w| **w > 0.0).count(), t.mu);
        assert_eq!(p.eigen_interval, 1);
    }
}

#[test]
fn full_cma_constants_agree_with_the_reference_table_and_pycma_banners() {
    // Hansen 2016 Table 1 (3-4 significant digits) and pycma's "(5_w,10) mu_w=3.2 w_1=45%"
    let p = CmaParams::new(40, None).unwrap();
    assert_eq!((p.lambda, p.mu), (15, 7));
    assert!((p.mu_eff - 4.541).abs() < 1e-3);
    assert!((p.c1 - 1.17e-3).abs() < 1e-5);
    assert!((p.c_mu - 3.12e-3).abs() < 1e-5);
    assert!((p.c_sigma - 0.132).abs() < 1e-3);
    assert!((p.c_c - 0.093).abs() < 1e-3);
    let p = CmaParams::new(6, None).unwrap();
    assert_eq!((p.lambda, p.mu), (9, 4));
    assert!((p.mu_eff - 2.841).abs() < 1e-3 && (p.c_c - 0.409).abs() < 1e-3);
    let p = CmaParams::new(10, None).unwrap();
    assert_eq!((p.weights[0] * 100.0).round(), 46.0); // 45.6 %
    // Hansen's lazy-update rule kicks in around n = 200: max(1, floor(1/(10 n (c1 + c_mu))))
    let p = CmaParams::new(200, None).unwrap();
    let expected = (1.0 / (10.0 * 200.0 * (p.c1 + p.c_mu))).floor() as u64;
    assert_eq!(p.eigen_interval, expected.max(1));
    assert!(p.eigen_interval >= 2);
    // DFS at lambda = 128: c1 = 1.09e-7 (Hansen 2016 Table 1)
    let p = CmaParams::new(4288, Some(128)).unwrap();
    assert!((p.c1 - 1.09e-7).abs() < 1e-9);
    assert_eq!(p.eigen_interval, 6); // floor(1 / (10 · 4288 · 3.61e-6))
}

#[test]
fn sep_cma_constants_match_the_formula_table() {
    // (n, lambda, mu, mu_eff, c1, c_mu, c_sigma, d_sigma, c_c, w_1)
    let table = [
        (
            2,
            6,
            3,
            2.2548150822016044,
            0.15215124651757544,
            0.24411215894782715,
            0.5864815345383557,
            1.5864815345383558,
            0.6666666666666666,
            0.5856451065097651,
        ),
        (
            10,
            10,
            5,
            3.4147720863376096,
            0.015254974843195806,
            0.12984017559721336,
            0.32987190183678816,
            1.3298719018367882,
            0.2857142857142857,
            0.4295440419866498,
        ),
        (
            100,
            17,
            8,
            5.096188878610173,
            0.000194802926953566,
            0.02543131498909517,
            0.06564698489582318,
            1.0656469848958232,
            0.038461538461538464,
            0.3150958752676225,
        ),
    ];
    for (n, lambda, mu, mu_eff, c1, c_mu, c_sigma, d_sigma, c_c, w1) in table {
        let p = SepCmaParams::new(n, None).unwrap();
        assert_eq!((p.lambda, p.mu, p.weights.len()), (lambda, mu, mu));
        close("mu_eff", n, p.mu_eff, mu_eff);
        close("c1", n, p.c1, c1);
        close("c_mu", n, p.c_mu, c_mu);
        close("c_sigma", n, p.c_sigma, c_sigma);
        close("d_sigma", n, p.d_sigma, d_sigma);
        close("c_c", n, p.c_c, c_c);
        close("w_1", n, p.weights[0], w1);
        close("sum w", n, p.weights.iter().sum(), 1.0);
    }
}

#[test]
fn population_size_is_validated() {
    assert!(CmaParams::new(5, Some(1)).is_err());
    assert!(SepCmaParams::new(5, Some(0)).is_err());
    assert!(CmaParams::new(0, None).is_err());
    let p = CmaParams::new(3, Some(2)).unwrap();
    assert_eq!((p.lambda, p.mu), (2, 1));
    assert_eq!(p.weights[0], 1.0);
}

#[test]
fn sep_cma_rank_mu_rate_is_capped_for_large_populations() {
    // (n + 2)/3 · c_mu_full exceeds 1 for n = 10, lambda = 640 (IPOP's 7th run); uncapped,
    // as in `cmaes.SepCMA`, C gets a negative decay factor and diverges
    let p = SepCmaParams::new(10, Some(640)).unwrap();
    assert_eq!(p.c_mu, 1.0 - p.c1);
    let small = SepCmaParams::new(10, Some(20)).unwrap();
    assert!(small.c_mu < 1.0 - small.c1);
}
