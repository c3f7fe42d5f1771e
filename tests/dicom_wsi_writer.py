"""A DICOM VL Whole Slide Microscopy Image writer for tests, with pydicom: one instance per
pyramid level, frames in TILED_FULL order, uncompressed RGB (exact pixels).

The attributes are those of the VL WSI IOD that OpenSlide (through libdicom) reads: the SOP
class, ``ImageType`` (``ORIGINAL\\PRIMARY\\VOLUME\\NONE``), the total pixel matrix and its tile
(``Rows`` x ``Columns``), ``DimensionOrganizationType`` ``TILED_FULL``, the pixel spacing (mm)
in the shared functional groups, one optical path, and the study, series, frame-of-reference
and pyramid UIDs every level shares. The layout follows openslide-python's ``boxes_0.dcm``
fixture (written by PixelMed's TIFFToDicom), which OpenSlide is tested against.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, VLWholeSlideMicroscopyImageStorage, generate_uid
from slides import downsample


def write_dicom_wsi(
    directory: str | Path,
    pixels: np.ndarray,
    *,
    tile: int = 256,
    levels: int = 2,
    mpp: tuple[float, float] = (0.25, 0.25),
) -> list[Path]:
    """Write ``pixels`` as a DICOM WSI series, ``directory/level-K.dcm`` for each level K.

    Parameters
    ----------
    directory : path-like
        Created if missing.
    pixels : numpy.ndarray
        (H, W, 3) uint8 RGB; level K is its ``2^K`` block mean (edges padded with white tiles).
    tile : int
        Edge of the frames.
    levels : int
        Pyramid levels.
    mpp : (float, float)
        Micrometres per pixel, (Y, X), of level 0.

    Returns
    -------
    list of pathlib.Path
        The instances, level 0 first.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError("write_dicom_wsi writes (H, W, 3) uint8 pixels")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shared = {name: generate_uid() for name in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")}
    shared["PyramidUID"] = generate_uid()
    paths = []
    for level in range(levels):
        image = pixels if level == 0 else downsample(pixels, 2**level)
        dataset = _level(image, tile, (mpp[0] * 2**level, mpp[1] * 2**level), shared, level)
        path = directory / f"level-{level}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _level(image: np.ndarray, tile: int, mpp: tuple[float, float], shared: dict[str, str], level: int) -> Dataset:
    """The VL WSI instance of one level: its attributes and its frames in TILED_FULL order."""
    height, width = image.shape[:2]
    frames = _frames(image, tile)
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = VLWholeSlideMicroscopyImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = VLWholeSlideMicroscopyImageStorage
    ds.SOPInstanceUID = uid
    ds.update({name: value for name, value in shared.items()})
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Modality = "SM"
    ds.Manufacturer = "pixseg tests"
    today = datetime.date.today().strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDateTime = today
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
    ds.PatientName = ds.PatientID = ds.StudyID = ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.PatientBirthDate = ds.PatientSex = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = level + 1
    ds.PositionReferenceIndicator = "UNKNOWN"
    ds.VolumetricProperties = "VOLUME"
    ds.BurnedInAnnotation = ds.SpecimenLabelInImage = ds.ExtendedDepthOfField = "NO"
    ds.FocusMethod = "AUTO"
    ds.ContainerIdentifier = "SLIDE_1"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows = ds.Columns = tile
    ds.NumberOfFrames = len(frames)
    ds.TotalPixelMatrixRows = height
    ds.TotalPixelMatrixColumns = width
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth = width * mpp[1] / 1000
    ds.ImagedVolumeHeight = height * mpp[0] / 1000
    ds.ImagedVolumeDepth = 0.0
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 0
    origin.YOffsetInSlideCoordinateSystem = 0
    ds.TotalPixelMatrixOriginSequence = [origin]
    measures = Dataset()
    measures.PixelSpacing = [f"{mpp[0] / 1000:.6g}", f"{mpp[1] / 1000:.6g}"]  # mm: rows, columns
    measures.SliceThickness = 0
    frame_type = Dataset()
    frame_type.FrameType = ds.ImageType
    groups = Dataset()
    groups.PixelMeasuresSequence = [measures]
    groups.WholeSlideMicroscopyImageFrameTypeSequence = [frame_type]
    ds.SharedFunctionalGroupsSequence = [groups]
    illumination = Dataset()
    illumination.CodeValue, illumination.CodingSchemeDesignator = "111744", "DCM"
    illumination.CodeMeaning = "Brightfield illumination"
    colour = Dataset()
    colour.CodeValue, colour.CodingSchemeDesignator, colour.CodeMeaning = "414298005", "SCT", "Full Spectrum"
    path = Dataset()
    path.OpticalPathIdentifier = "0"
    path.IlluminationTypeCodeSequence = [illumination]
    path.IlluminationColorCodeSequence = [colour]
    ds.OpticalPathSequence = [path]
    ds.PixelData = frames.tobytes()
    return ds


def _frames(image: np.ndarray, tile: int) -> np.ndarray:
    """(frames, tile, tile, 3): the tiles of ``image`` row by row, edge tiles padded with white."""
    height, width = image.shape[:2]
    rows, columns = -(-height // tile), -(-width // tile)
    padded = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    padded[:height, :width] = image
    return padded.reshape(rows, tile, columns, tile, 3).swapaxes(1, 2).reshape(-1, tile, tile, 3)
