"""Volume geometry and rigid-body head motion, shared by the simulator and the engine.

Conventions (the volume stream contract)
----------------------------------------
* A volume is a 3-D array of shape ``dims = (nx, ny, nz)``: x runs left→right, y
  posterior→anterior, z inferior→superior. On the wire it is flattened in C order
  (z fastest); ``axis_order = "xyz"`` names this.
* Rigid motion parameters are ``(tx, ty, tz, rx, ry, rz)``: translations in mm and rotations
  in degrees about the x, y, z axes through the volume centre, composed as
  ``R = Rz @ Ry @ Rx``. A head position maps to scanner space as ``x_scan = R x_head + t``.
* Framewise displacement follows Power et al. (2012): the sum of absolute parameter
  differences, rotations converted to arc length on a 50 mm sphere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "VolumeGeometry",
    "framewise_displacement",
    "resample_rigid",
    "rigid_matrix",
    "rotation_matrix",
    "voxel_transform",
]


@dataclass(frozen=True)
class VolumeGeometry:
    """The shape and physical layout of the volumes of one stream.

    Parameters
    ----------
    dims
        Voxels along x, y and z.
    voxel_size
        Voxel edge lengths in mm.
    tr
        Repetition time in seconds.
    affine
        4×4 voxel-index → scanner-mm (RAS) matrix; defaults to a centred diagonal one.
    axis_order
        How the flat sample maps to the array (only ``"xyz"``, C order, is produced here).
    subject, session
        Identifiers carried along for the record.
    """

    dims: tuple[int, int, int] = (64, 64, 32)
    voxel_size: tuple[float, float, float] = (3.0, 3.0, 3.0)
    tr: float = 2.0
    affine: tuple[float, ...] | None = None
    axis_order: str = "xyz"
    subject: str = ""
    session: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        dims = tuple(int(d) for d in self.dims)
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"dims must be three positive integers, got {self.dims}")
        vox = tuple(float(v) for v in self.voxel_size)
        if len(vox) != 3 or min(vox) <= 0:
            raise ValueError(f"voxel_size must be three positive numbers, got {self.voxel_size}")
        if not self.tr > 0:
            raise ValueError(f"tr must be positive, got {self.tr}")
        if self.axis_order != "xyz":
            raise ValueError(f"axis_order {self.axis_order!r} is not supported (only 'xyz')")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "voxel_size", vox)
        if self.affine is None:
            aff = np.diag([*vox, 1.0])
            aff[:3, 3] = -(np.array(dims) - 1) / 2 * np.array(vox)
            object.__setattr__(self, "affine", tuple(aff.ravel().tolist()))
        else:
            aff = np.asarray(self.affine, dtype=float).ravel()
            if aff.size != 16:
                raise ValueError("affine must have 16 values (a 4×4 matrix)")
            object.__setattr__(self, "affine", tuple(aff.tolist()))

    @property
    def n_voxels(self) -> int:
        """Number of values in one volume."""
        return int(np.prod(self.dims))

    @property
    def affine_matrix(self) -> np.ndarray:
        """The 4×4 affine as an array."""
        return np.asarray(self.affine, dtype=float).reshape(4, 4)

    @property
    def centre(self) -> np.ndarray:
        """Voxel coordinates of the rotation centre."""
        return (np.array(self.dims, dtype=float) - 1) / 2

    def to_dict(self) -> dict:
        """A JSON-friendly description."""
        return {
            "dims": list(self.dims),
            "voxel_size": list(self.voxel_size),
            "tr": self.tr,
            "affine": list(self.affine),
            "axis_order": self.axis_order,
            "subject": self.subject,
            "session": self.session,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VolumeGeometry:
        """Inverse of :meth:`to_dict`."""
        return cls(
            dims=tuple(d["dims"]),
            voxel_size=tuple(d.get("voxel_size", (3.0, 3.0, 3.0))),
            tr=float(d.get("tr", 2.0)),
            affine=tuple(d["affine"]) if d.get("affine") is not None else None,
            axis_order=d.get("axis_order", "xyz"),
            subject=str(d.get("subject", "")),
            session=str(d.get("session", "")),
        )


def rotation_matrix(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` for angles in degrees."""
    ax, ay, az = np.deg2rad([rx, ry, rz])
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def rigid_matrix(params: np.ndarray) -> np.ndarray:
    """The 4×4 head→scanner transform (mm, about the volume centre) of six parameters."""
    p = np.asarray(params, dtype=float)
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(*p[3:6])
    m[:3, 3] = p[:3]
    return m


def voxel_transform(params: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset mapping scanner voxel indices to head voxel indices.

    A motion-affected volume ``A`` samples the head image ``H`` as
    ``A[o] = H[matrix @ o + offset]`` — the form :func:`scipy.ndimage.affine_transform` takes.
    """
    p = np.asarray(params, dtype=float)
    d = np.diag(geometry.voxel_size)
    d_inv = np.diag(1.0 / np.asarray(geometry.voxel_size))
    rt = rotation_matrix(*p[3:6]).T
    matrix = d_inv @ rt @ d
    c = geometry.centre
    offset = c - matrix @ c - d_inv @ rt @ p[:3]
    return matrix, offset


def resample_rigid(
    volume: np.ndarray,
    params: np.ndarray,
    geometry: VolumeGeometry,
    order: int = 1,
    inverse: bool = False,
    cval: float = 0.0,
) -> np.ndarray:
    """Apply (or undo, with ``inverse=True``) rigid head motion to a volume.

    Parameters
    ----------
    volume
        The head image in head space (or, with ``inverse``, an acquired image).
    params
        Six motion parameters (mm, degrees).
    geometry
        The volume's geometry (voxel size and centre).
    order
        Spline order of the interpolation (1 = trilinear, as scanners' online correction).
    """
    matrix, offset = voxel_transform(params, geometry)
    if inverse:
        matrix = np.linalg.inv(matrix)
        offset = -matrix @ offset
    out = ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32),
        matrix,
        offset,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=order > 1,
    )
    return out


def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Power et al. (2012) framewise displacement of a (T, 6) motion series, in mm.

    The first TR has FD 0.
    """
    p = np.atleast_2d(np.asarray(params, dtype=float))
    diff = np.abs(np.diff(p, axis=0))
    fd = diff[:, :3].sum(axis=1) + radius * np.deg2rad(diff[:, 3:6]).sum(axis=1)
    return np.concatenate([[0.0], fd])
