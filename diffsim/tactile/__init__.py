"""Vision-based tactile sensors: the sensor on an FEM pad (:mod:`.sensor`), cameras
(:mod:`.cameras`), markers (:mod:`.markers`: detection, binding, drawing) and the optical
(GelSight-style RGB) image (:mod:`.optical`)."""
from .optical import OpticalTactile
from .sensor import TactileSensor, mount_sensor

__all__ = ["TactileSensor", "OpticalTactile", "mount_sensor"]
