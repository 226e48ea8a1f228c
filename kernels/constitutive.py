"""Constitutive models of the MPM solver and their hand-written adjoints (``@ti.func``).

Each particle carries a material code (below) and a parameter 4-vector ``prm`` whose
meaning depends on the code (SI units):

==================  ============================================================
code                prm
==================  ============================================================
FIXED_COROTATED     (mu, lam, -, -)           Lame parameters, Pa
NEO_HOOKEAN         (mu, lam, -, -)
VON_MISES           (mu, lam, yield_stress, -)  Hencky strain, Kirchhoff yield, Pa
DRUCKER_PRAGER      (mu, lam, alpha, s)       alpha = sqrt(2/3) 2 sin(phi)/(3 - sin(phi)),
                                              s = cohesive volumetric strain (0: dry sand)
FLUID               (K, eta, -, -)            bulk modulus Pa, dynamic viscosity Pa s
VISCOPLASTIC        (K, eta, yield_stress, m) regularised Bingham (Papanastasiou), m in s
EXTERNAL            (-)                       stress supplied from outside (a torch module)
==================  ============================================================

A material stage maps the previous deformation gradient ``F`` and the APIC affine matrix
``C`` to the trial gradient ``F_tr = (I + dt C) F``, projects it (plasticity) to the new
elastic ``F_e`` and returns the Kirchhoff stress ``tau(F_e)``. :func:`material_vjp` is its
exact adjoint (checked against finite differences in the tests).

Deformation gradients are held as ``F - I`` (the particle state stores ``F_minus_I``; the
stage maps ``F_old - I`` to ``F_tr - I = dt C + (F_old - I) + dt C (F_old - I)`` and returns
``F_e - I``). Near rest the strains that carry the stress are ~1e-5 while an entry of ``F``
itself is ~1 and resolved to ~6e-8 in f32: stored as ``F`` they lost two digits every
substep (dry sand's E gradient was 2% off f64 after 200 f32 substeps, all of it from the
rounding of the stored ``F``). The Hencky plastic models never form ``I + small``: they take
the eigen-decomposition of ``b - I = K + K^T + K K^T`` (``K = F_tr - I``), the log strains
``0.5 log1p(eigenvalues)``, and return ``F_e - I = K + M (I + K)`` with
``M = U diag(expm1(eps_e - eps)) U^T`` (:func:`_hencky_spectral`); the stress depends on
the left stretch only. Inverted or nearly singular trial states use the SVD form.
"""
import taichi as ti

from .mathops import (atanh_over, cofactor, divided_difference, expm1, expm1_over, log1p, log_ratio_over,
                      polar_rotation, polar_rotation_vjp, spectral_vjp, svd3, sym_eig3)

FIXED_COROTATED = 0
NEO_HOOKEAN = 1
VON_MISES = 2
DRUCKER_PRAGER = 3
FLUID = 4
VISCOPLASTIC = 5
EXTERNAL = 6

SIGMA_MIN = 1e-4  # singular values are clamped here before taking logarithms

# Drucker-Prager apex (dry sand). Stress-free sand (F_e = I, the state every particle starts
# in and returns to after tension) would sit exactly on the apex of the yield cone, where the
# return map has a kink: which side a particle takes, and so its gradient, would be decided
# by rounding (and by thread order in the grid sums). The cone's apex is therefore placed
# APEX_BAND (volumetric log strain) beyond the stress-free tip s: stress-free states lie
# strictly inside the elastic region (an apparent cohesion of K * 1e-5, ~0.2 Pa for
# E = 2e4 Pa), and tension past the apex returns to the tip continuously through a band of
# the same width (tr_e = s + 2 APEX_BAND - tr). Rounding noise in f32 is ~1e-7.
APEX_BAND = 1e-5


def material_mask(codes) -> int:
    """Bit mask of the material codes present in a domain. Kernels take it as a
    compile-time constant so that only the models in use are compiled."""
    m = 0
    for c in codes:
        m |= 1 << int(c)
    return m


def _has(mats, *codes):
    return any(mats & (1 << c) for c in codes)


# --------------------------------------------------------------------------- elastic


@ti.func
def _fixed_corotated(F, mu, lam):
    R = polar_rotation(F)
    J = F.determinant()
    tau = 2.0 * mu * (F - R) @ F.transpose() + ti.Matrix.identity(float, 3) * lam * (J - 1.0) * J
    return tau, R


@ti.func
def _neo_hookean(F, mu, lam):
    J = ti.max(F.determinant(), SIGMA_MIN ** 3)
    return mu * (F @ F.transpose() - ti.Matrix.identity(float, 3)) + ti.Matrix.identity(float, 3) * lam * ti.log(J)


# --------------------------------------------------------------------------- plasticity


@ti.func
def _return_map(mtype, eps, prm, mats: ti.template()):
    """Return mapping in log-strain space: trial ``eps`` -> elastic ``eps_e``.

    Returns ``eps_e``, the Jacobian ``d eps_e / d eps`` (3x3), ``d eps_e / d prm``
    (3x4, one column per parameter) and ``c`` with ``eps_e_i - eps_e_j = c (eps_i - eps_j)``
    (every branch scales the deviatoric part uniformly: 1 elastic, 0 at the tip; the
    adjoint's divided differences use it).
    """
    mu = prm[0]
    lam = prm[1]
    I3 = ti.Matrix.identity(float, 3)
    ones = ti.Vector([1.0, 1.0, 1.0])
    P1 = ones.outer_product(ones) / 3.0
    tr = eps.sum()
    dev = eps - tr / 3.0 * ones
    nrm = dev.norm()
    eps_e = eps
    J = I3
    D = ti.Matrix.zero(float, 3, 4)
    c = 1.0
    if ti.static(_has(mats, VON_MISES)):
        if mtype == VON_MISES:
            ty = prm[2]
            k = ty / (2.0 * mu)
            if nrm > k and nrm > 0.0:
                n = dev / nrm
                eps_e = tr / 3.0 * ones + k * n
                c = k / nrm
                J = P1 + (k / nrm) * (I3 - P1 - n.outer_product(n))
                for r in ti.static(range(3)):
                    D[r, 0] = -k / mu * n[r]          # d/d mu
                    D[r, 2] = n[r] / (2.0 * mu)       # d/d yield_stress
    if ti.static(_has(mats, DRUCKER_PRAGER)):
        if mtype == DRUCKER_PRAGER:
            alpha = prm[2]
            s = prm[3]
            kappa = 1.0 + 1.5 * lam / mu
            sa = s + ti.static(APEX_BAND)  # the cone's apex (see APEX_BAND)
            over = tr - sa
            if over > 0.0:  # tension beyond the apex: to the tip s, reached continuously
                if over < ti.static(APEX_BAND):  # tr_e = sa - over, from sa down to s
                    eps_e = (sa - over) / 3.0 * ones
                    c = 0.0
                    J = -P1
                    for r in ti.static(range(3)):
                        D[r, 3] = 2.0 / 3.0
                else:
                    eps_e = s / 3.0 * ones
                    c = 0.0
                    J = ti.Matrix.zero(float, 3, 3)
                    for r in ti.static(range(3)):
                        D[r, 3] = 1.0 / 3.0
            else:
                dgamma = nrm + kappa * over * alpha
                if dgamma > 0.0 and nrm > 0.0:
                    n = dev / nrm
                    eps_e = eps - dgamma * n
                    c = 1.0 - dgamma / nrm
                    J = I3 - n.outer_product(n) - kappa * alpha * n.outer_product(ones) \
                        - (dgamma / nrm) * (I3 - P1 - n.outer_product(n))
                    dk_dmu = -1.5 * lam / (mu * mu)
                    dk_dlam = 1.5 / mu
                    for r in ti.static(range(3)):
                        D[r, 0] = -over * alpha * dk_dmu * n[r]
                        D[r, 1] = -over * alpha * dk_dlam * n[r]
                        D[r, 2] = -kappa * over * n[r]
                        D[r, 3] = kappa * alpha * n[r]
    return eps_e, J, D, c


@ti.func
def _hencky_svd(mtype, F, prm, mats: ti.template()):
    """Plastic projection + Hencky (StVK on log strain) Kirchhoff stress through the SVD of
    ``F`` (inverted or nearly singular trial states; see :func:`_hencky_plastic`)."""
    U, s, V = svd3(F)
    sc = ti.max(s, SIGMA_MIN)
    eps = ti.log(sc)
    eps_e, Jm, D, _ = _return_map(mtype, eps, prm, mats)
    sig_e = ti.exp(eps_e)
    t = 2.0 * prm[0] * eps_e + prm[1] * eps_e.sum()
    Fe = U @ ti.Matrix([[sig_e[0], 0.0, 0.0], [0.0, sig_e[1], 0.0], [0.0, 0.0, sig_e[2]]]) @ V.transpose()
    tau = U @ ti.Matrix([[t[0], 0.0, 0.0], [0.0, t[1], 0.0], [0.0, 0.0, t[2]]]) @ U.transpose()
    return Fe, tau


# Trial states whose smallest stretch is below this (or inverted) take the SVD form.
SPECTRAL_MIN_STRETCH = 1e-2


@ti.func
def _diag(d):
    return ti.Matrix([[d[0], 0.0, 0.0], [0.0, d[1], 0.0], [0.0, 0.0, d[2]]])


@ti.func
def _stretch_spectrum(K):
    """Eigenvalues ``lam`` and vectors ``U`` of ``b - I`` for ``F = I + K`` (``b = F F^T``),
    and whether the spectral form applies (not inverted, every stretch above
    SPECTRAL_MIN_STRETCH)."""
    lam, U = sym_eig3(K + K.transpose() + K @ K.transpose())
    ok = (ti.Matrix.identity(float, 3) + K).determinant() > 0.0 and \
        1.0 + lam.min() > ti.static(SPECTRAL_MIN_STRETCH ** 2)
    return lam, U, ok


@ti.func
def _hencky_spectral(mtype, K, lam, U, prm, mats: ti.template()):
    """``(F_e - I, tau)`` from ``K = F_tr - I`` and the spectrum of ``b_tr - I``."""
    eps = 0.5 * ti.Vector([log1p(lam[0]), log1p(lam[1]), log1p(lam[2])])
    eps_e, Jm, D, c = _return_map(mtype, eps, prm, mats)
    t = 2.0 * prm[0] * eps_e + prm[1] * eps_e.sum()
    d = eps_e - eps
    M = U @ _diag(ti.Vector([expm1(d[0]), expm1(d[1]), expm1(d[2])])) @ U.transpose()
    De = K + M @ (ti.Matrix.identity(float, 3) + K)
    return De, U @ _diag(t) @ U.transpose()


@ti.func
def _hencky_parameter_adjoint(eps_e_bar, t_bar, eps_e, stiff, D):
    """Parameter adjoint of a Hencky model from the adjoints of the elastic log strains
    ``eps_e`` (through the return map's ``D = d eps_e / d prm``) and of the principal
    stresses ``t = stiff eps_e`` (through ``D`` and directly through mu and lambda)."""
    prm_bar = ti.Vector([0.0, 0.0, 0.0, 0.0])
    SD = stiff @ D
    for k in ti.static(range(4)):
        for i in ti.static(range(3)):
            prm_bar[k] += eps_e_bar[i] * D[i, k] + t_bar[i] * SD[i, k]
    prm_bar[0] += 2.0 * t_bar.dot(eps_e)
    prm_bar[1] += t_bar.sum() * eps_e.sum()
    return prm_bar


@ti.func
def _hencky_spectral_vjp(mtype, K, lam, U, prm, De_bar, tau_bar, mats: ti.template()):
    """Adjoint of :func:`_hencky_spectral`: ``(K_bar, prm_bar)``.

    ``F_e - I = K + M(b - I) (I + K)`` and ``tau(b - I)`` are spectral functions of the
    symmetric ``b - I``; their adjoint is ``U (Gamma o U^T X U) U^T`` with the eigenvalue
    Jacobian on the diagonal and divided differences ``(f_i - f_j) / (lam_i - lam_j)``
    off it, computed without cancellation: with ``z = (lam_i - lam_j) / (2 + lam_i + lam_j)``
    the log strains ``eps = log1p(lam) / 2`` differ by ``L = atanh(z)``, so
    ``L / (lam_i - lam_j) = (atanh(z) / z) / (2 + lam_i + lam_j)``; every return map scales
    deviatoric differences by ``c`` (see :func:`_return_map`), so ``t_i - t_j = 2 mu c L`` and
    ``r_i - r_j = exp(d_j) expm1((c - 1) L)`` for ``r = expm1(d)``, ``d = eps_e - eps``."""
    I3 = ti.Matrix.identity(float, 3)
    mu = prm[0]
    lmb = prm[1]
    ones = ti.Vector([1.0, 1.0, 1.0])
    eps = 0.5 * ti.Vector([log1p(lam[0]), log1p(lam[1]), log1p(lam[2])])
    eps_e, Jm, D, c = _return_map(mtype, eps, prm, mats)
    stiff = 2.0 * mu * I3 + lmb * ones.outer_product(ones)
    d = eps_e - eps
    ed = ti.exp(d)
    M = U @ _diag(ti.Vector([expm1(d[0]), expm1(d[1]), expm1(d[2])])) @ U.transpose()
    Fm = I3 + K
    K_bar = De_bar + M @ De_bar
    X = U.transpose() @ (De_bar @ Fm.transpose()) @ U        # adjoint of M, eigenframe
    Y = U.transpose() @ tau_bar @ U                          # adjoint of tau, eigenframe
    w = ed * ti.Vector([X[0, 0], X[1, 1], X[2, 2]])          # adjoint of eps_e through r
    y = ti.Vector([Y[0, 0], Y[1, 1], Y[2, 2]])               # adjoint of t
    g = Jm.transpose() @ (w + stiff @ y) - w                 # adjoint of eps
    P = _diag(g * 0.5 / (1.0 + lam))
    for i, j in ti.static([(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]):
        s2 = 2.0 + lam[i] + lam[j]
        z = (lam[i] - lam[j]) / s2
        q = atanh_over(z) / s2                               # (eps_i - eps_j) / (lam_i - lam_j)
        L = q * (lam[i] - lam[j])
        ddr = ed[j] * (c - 1.0) * expm1_over((c - 1.0) * L) * q
        ddt = 2.0 * mu * c * q
        P[i, j] = ddr * X[i, j] + ddt * Y[i, j]
    B_bar = U @ P @ U.transpose()
    K_bar += (B_bar + B_bar.transpose()) @ Fm
    return K_bar, _hencky_parameter_adjoint(w, y, eps_e, stiff, D)


@ti.func
def _hencky_plastic(mtype, K, prm, mats: ti.template()):
    """Plastic projection + Hencky (StVK on log strain) Kirchhoff stress:
    ``(F_e - I, tau)`` from ``K = F_tr - I``."""
    lam, U, ok = _stretch_spectrum(K)
    De = K
    tau = ti.Matrix.zero(float, 3, 3)
    if ok:
        De, tau = _hencky_spectral(mtype, K, lam, U, prm, mats)
    else:
        Fe, tau_s = _hencky_svd(mtype, ti.Matrix.identity(float, 3) + K, prm, mats)
        De = Fe - ti.Matrix.identity(float, 3)
        tau = tau_s
    return De, tau


@ti.func
def _hencky_plastic_vjp(mtype, K, prm, De_bar, tau_bar, mats: ti.template()):
    """Adjoint of :func:`_hencky_plastic`: ``(K_bar, prm_bar)``."""
    lam, U, ok = _stretch_spectrum(K)
    K_bar = ti.Matrix.zero(float, 3, 3)
    prm_bar = ti.Vector([0.0, 0.0, 0.0, 0.0])
    if ok:
        K_bar, prm_bar = _hencky_spectral_vjp(mtype, K, lam, U, prm, De_bar, tau_bar, mats)
    else:
        K_bar, prm_bar = _hencky_svd_vjp(mtype, ti.Matrix.identity(float, 3) + K, prm, De_bar, tau_bar, mats)
    return K_bar, prm_bar


# --------------------------------------------------------------------------- fluids


@ti.func
def _viscoplastic_phi(rate, ty, m):
    """Regularised yield viscosity ``ty (1 - exp(-m rate)) / rate`` and its derivative."""
    x = m * rate
    phi = ty * m
    dphi = -0.5 * ty * m * m
    if x > 1e-4:
        e = ti.exp(-x)
        phi = ty * (1.0 - e) / rate
        dphi = ty * (m * e * rate - (1.0 - e)) / (rate * rate)
    else:
        phi = ty * m * (1.0 - 0.5 * x + x * x / 6.0)
        dphi = ty * m * m * (-0.5 + x / 3.0)
    return phi, dphi


@ti.func
def _fluid(mtype, F, C, prm, mats: ti.template()):
    """Weakly compressible fluid: p = K (1 - J); Newtonian or regularised Bingham."""
    J = F.determinant()
    K = prm[0]
    eta = prm[1]
    D = 0.5 * (C + C.transpose())
    if ti.static(_has(mats, VISCOPLASTIC)):
        if mtype == VISCOPLASTIC:
            rate = ti.sqrt(2.0 * (D * D).sum())
            phi, _ = _viscoplastic_phi(rate, prm[2], prm[3])
            eta = eta + phi
    tau = ti.Matrix.identity(float, 3) * K * (J - 1.0) * J + 2.0 * eta * J * D
    cbrt = ti.abs(J) ** (1.0 / 3.0)
    if J < 0.0:
        cbrt = -cbrt
    Fe = ti.Matrix.identity(float, 3) * cbrt
    return Fe, tau


# --------------------------------------------------------------------------- stage


@ti.func
def trial_deformation(D, C, dt):
    """``F_tr - I = dt C + D + dt C D`` for ``D = F - I`` (``F_tr = (I + dt C) F``)."""
    dC = dt * C
    return dC + D + dC @ D


@ti.func
def material_response(mtype, K, C, prm, mats: ti.template()):
    """New elastic ``F_e - I`` and Kirchhoff stress (Pa) from the trial ``K = F_tr - I``.

    ``mats``: compile-time mask of the material codes that can occur (see material_mask).
    """
    De = K
    tau = ti.Matrix.zero(float, 3, 3)
    I3 = ti.Matrix.identity(float, 3)
    if ti.static(_has(mats, FIXED_COROTATED)):
        if mtype == FIXED_COROTATED:
            tau, _ = _fixed_corotated(I3 + K, prm[0], prm[1])
    if ti.static(_has(mats, NEO_HOOKEAN)):
        if mtype == NEO_HOOKEAN:
            tau = _neo_hookean(I3 + K, prm[0], prm[1])
    if ti.static(_has(mats, VON_MISES, DRUCKER_PRAGER)):
        if mtype == VON_MISES or mtype == DRUCKER_PRAGER:
            De, tau = _hencky_plastic(mtype, K, prm, mats)
    if ti.static(_has(mats, FLUID, VISCOPLASTIC)):
        if mtype == FLUID or mtype == VISCOPLASTIC:
            Fe, tau_f = _fluid(mtype, I3 + K, C, prm, mats)
            De = Fe - I3
            tau = tau_f
    return De, tau


@ti.func
def material_vjp(mtype, D_old, C, prm, dt, De_bar, tau_bar, mats: ti.template()):
    """Adjoint of (``F_e - I``, ``tau``) = material stage(``F_old - I``, ``C``, ``prm``).

    Returns ``(D_old_bar, C_bar, prm_bar)``.
    """
    I3 = ti.Matrix.identity(float, 3)
    A = I3 + dt * C
    K = trial_deformation(D_old, C, dt)
    F = I3 + K
    F_bar = ti.Matrix.zero(float, 3, 3)
    C_bar = ti.Matrix.zero(float, 3, 3)
    prm_bar = ti.Vector([0.0, 0.0, 0.0, 0.0])
    handled = False
    Fe_bar = De_bar
    if ti.static(_has(mats, FIXED_COROTATED)):
        if mtype == FIXED_COROTATED:
            handled = True
            mu = prm[0]
            lam = prm[1]
            R = polar_rotation(F)
            J = F.determinant()
            cof = cofactor(F)
            trb = tau_bar.trace()
            F_bar = 2.0 * mu * ((tau_bar + tau_bar.transpose()) @ F - tau_bar.transpose() @ R)
            F_bar += polar_rotation_vjp(R, F, -2.0 * mu * tau_bar @ F)
            F_bar += lam * (2.0 * J - 1.0) * trb * cof
            prm_bar[0] = 2.0 * (tau_bar * ((F - R) @ F.transpose())).sum()
            prm_bar[1] = trb * (J - 1.0) * J
            F_bar += Fe_bar
    if ti.static(_has(mats, NEO_HOOKEAN)):
        if mtype == NEO_HOOKEAN:
            handled = True
            mu = prm[0]
            lam = prm[1]
            J = F.determinant()
            trb = tau_bar.trace()
            F_bar = mu * (tau_bar + tau_bar.transpose()) @ F
            if J > SIGMA_MIN ** 3:
                F_bar += lam * trb * cofactor(F) / J
            prm_bar[0] = (tau_bar * (F @ F.transpose() - I3)).sum()
            prm_bar[1] = trb * ti.log(ti.max(J, SIGMA_MIN ** 3))
            F_bar += Fe_bar
    if ti.static(_has(mats, VON_MISES, DRUCKER_PRAGER)):
        if mtype == VON_MISES or mtype == DRUCKER_PRAGER:
            handled = True
            F_bar, prm_bar = _hencky_plastic_vjp(mtype, K, prm, Fe_bar, tau_bar, mats)
    if ti.static(_has(mats, FLUID, VISCOPLASTIC)):
        if mtype == FLUID or mtype == VISCOPLASTIC:
            handled = True
            F_bar, C_bar, prm_bar = _fluid_vjp(mtype, F, C, prm, Fe_bar, tau_bar, mats)
    if not handled:  # EXTERNAL: F_e = F_tr, stress from outside
        F_bar = Fe_bar
    C_bar += dt * F_bar @ (I3 + D_old).transpose()
    return A.transpose() @ F_bar, C_bar, prm_bar


@ti.func
def _hencky_divided_differences(s, sig_e, t, g2, c, mu, J1, J2):
    """``(g_j - g_i) / (s_j - s_i)`` of the Hencky model's ``g1 = exp(eps_e)`` and
    ``g2 = t / s`` without cancellation. With ``L = log(s_j / s_i)`` the return map gives
    ``eps_e_j - eps_e_i = c L`` and ``t_j - t_i = 2 mu c L``, so

        dd1 = exp(eps_e_i) c expm1(c L)/(c L) * L / (s_j - s_i)
        dd2 = 2 mu c L / (s_j - s_i) / s_j - t_i / (s_i s_j)

    with ``L / (s_j - s_i)`` from :func:`log_ratio_over`. Near the apex of dry sand the
    singular values differ by ~1e-5 while f32 resolves ~1e-7: the plain quotient (or its
    limit, used below sqrt(eps)) was wrong by percents there. Clamped (tiny or inverted)
    singular values fall back to the generic quotient."""
    dd1 = ti.Matrix.zero(float, 3, 3)
    dd2 = ti.Matrix.zero(float, 3, 3)
    for i, j in ti.static([(0, 1), (0, 2), (1, 2), (1, 0), (2, 0), (2, 1)]):
        if s[i] > SIGMA_MIN and s[j] > SIGMA_MIN:
            q = log_ratio_over(s[j], s[i])            # L / (s_j - s_i)
            L = q * (s[j] - s[i])
            dd1[i, j] = sig_e[i] * c * expm1_over(c * L) * q
            dd2[i, j] = 2.0 * mu * c * q / s[j] - t[i] / (s[i] * s[j])
        else:
            dd1[i, j] = divided_difference(sig_e[j], sig_e[i], s[j], s[i], J1[i, i] - J1[i, j])
            dd2[i, j] = divided_difference(g2[j], g2[i], s[j], s[i], J2[i, i] - J2[i, j])
    return dd1, dd2


@ti.func
def _hencky_svd_vjp(mtype, F, prm, Fe_bar, tau_bar, mats: ti.template()):
    mu = prm[0]
    lam = prm[1]
    U, s, V = svd3(F)
    mask = ti.Vector([1.0, 1.0, 1.0])
    for i in ti.static(range(3)):
        if s[i] < SIGMA_MIN:
            mask[i] = 0.0
    sc = ti.max(s, SIGMA_MIN)
    eps = ti.log(sc)
    eps_e, Jm, D, cdev = _return_map(mtype, eps, prm, mats)
    sig_e = ti.exp(eps_e)
    ones = ti.Vector([1.0, 1.0, 1.0])
    stiff = 2.0 * mu * ti.Matrix.identity(float, 3) + lam * ones.outer_product(ones)
    dlog = ti.Matrix([[mask[0] / sc[0], 0.0, 0.0], [0.0, mask[1] / sc[1], 0.0], [0.0, 0.0, mask[2] / sc[2]]])
    t = stiff @ eps_e
    # F_e = U diag(g1) V^T
    g1 = sig_e
    J1 = ti.Matrix([[sig_e[0], 0.0, 0.0], [0.0, sig_e[1], 0.0], [0.0, 0.0, sig_e[2]]]) @ Jm @ dlog
    # tau = G F^T with G = U diag(g2) V^T, g2 = t / s
    ss = s
    for i in ti.static(range(3)):
        if ti.abs(ss[i]) < SIGMA_MIN:
            ss[i] = SIGMA_MIN if ss[i] >= 0.0 else -SIGMA_MIN
    g2 = t / ss
    Jt = stiff @ Jm @ dlog
    J2 = ti.Matrix.zero(float, 3, 3)
    for i, j in ti.static(ti.ndrange(3, 3)):
        J2[i, j] = Jt[i, j] / ss[i]
        if ti.static(i == j):
            J2[i, j] -= t[i] / (ss[i] * ss[i])
    G = U @ ti.Matrix([[g2[0], 0.0, 0.0], [0.0, g2[1], 0.0], [0.0, 0.0, g2[2]]]) @ V.transpose()
    F_bar = tau_bar.transpose() @ G
    dd1, dd2 = _hencky_divided_differences(s, sig_e, t, g2, cdev, mu, J1, J2)
    Fa, d1 = spectral_vjp(U, s, V, g1, J1, Fe_bar, dd1)
    Fb, d2 = spectral_vjp(U, s, V, g2, J2, tau_bar @ F, dd2)
    F_bar += Fa + Fb
    return F_bar, _hencky_parameter_adjoint(d1 * sig_e, d2 / ss, eps_e, stiff, D)


@ti.func
def _fluid_vjp(mtype, F, C, prm, Fe_bar, tau_bar, mats: ti.template()):
    K = prm[0]
    eta = prm[1]
    J = F.determinant()
    D = 0.5 * (C + C.transpose())
    sym_tb = 0.5 * (tau_bar + tau_bar.transpose())
    Dtb = (D * tau_bar).sum()
    prm_bar = ti.Vector([0.0, 0.0, 0.0, 0.0])
    eta_eff = eta
    D_bar = ti.Matrix.zero(float, 3, 3)
    if ti.static(_has(mats, VISCOPLASTIC)):
        if mtype == VISCOPLASTIC:
            rate = ti.sqrt(2.0 * (D * D).sum())
            phi, dphi = _viscoplastic_phi(rate, prm[2], prm[3])
            eta_eff = eta + phi
            if rate > 0.0:
                D_bar += 2.0 * J * Dtb * dphi * 2.0 * D / rate
                x = prm[3] * rate
                e = ti.exp(-x)
                dphi_dty = prm[3] * (1.0 - 0.5 * x + x * x / 6.0)
                if x > 1e-4:
                    dphi_dty = (1.0 - e) / rate
                prm_bar[2] = 2.0 * J * Dtb * dphi_dty
                prm_bar[3] = 2.0 * J * Dtb * prm[2] * e
            else:
                prm_bar[3] = 0.0
                prm_bar[2] = 2.0 * J * Dtb * prm[3]
    D_bar += 2.0 * eta_eff * J * sym_tb
    trb = tau_bar.trace()
    J_bar = trb * K * (2.0 * J - 1.0) + 2.0 * eta_eff * Dtb
    cbrt = ti.abs(J) ** (1.0 / 3.0)
    J_bar += Fe_bar.trace() / (3.0 * ti.max(cbrt * cbrt, SIGMA_MIN))
    prm_bar[0] = trb * (J - 1.0) * J
    prm_bar[1] = 2.0 * J * Dtb
    F_bar = J_bar * cofactor(F)
    C_bar = 0.5 * (D_bar + D_bar.transpose())
    return F_bar, C_bar, prm_bar


@ti.func
def energy_density(mtype, F, prm, mats: ti.template()):
    """Elastic energy per unit reference volume (J/m^3) of the stored elastic ``F``."""
    psi = 0.0
    mu = prm[0]
    lam = prm[1]
    if ti.static(_has(mats, FIXED_COROTATED)):
        if mtype == FIXED_COROTATED:
            R = polar_rotation(F)
            J = F.determinant()
            psi = mu * (F - R).norm_sqr() + 0.5 * lam * (J - 1.0) ** 2
    if ti.static(_has(mats, NEO_HOOKEAN)):
        if mtype == NEO_HOOKEAN:
            J = ti.max(F.determinant(), SIGMA_MIN ** 3)
            lj = ti.log(J)
            psi = 0.5 * mu * ((F * F).sum() - 3.0) - mu * lj + 0.5 * lam * lj * lj
    if ti.static(_has(mats, VON_MISES, DRUCKER_PRAGER)):
        if (mtype == VON_MISES or mtype == DRUCKER_PRAGER):
            U, s, V = svd3(F)
            eps = ti.log(ti.max(s, SIGMA_MIN))
            psi = mu * eps.norm_sqr() + 0.5 * lam * eps.sum() ** 2
    if ti.static(_has(mats, FLUID, VISCOPLASTIC)):
        if (mtype == FLUID or mtype == VISCOPLASTIC):
            J = F.determinant()
            psi = 0.5 * prm[0] * (J - 1.0) ** 2
    return psi
