"""Vision-based tactile sensors: the sensor on an FEM pad (:mod:`.sensor`), cameras
(:mod:`.cameras`) and markers (:mod:`.markers`: detection, binding, drawing)."""
from .sensor import TactileSensor, mount_sensor

__all__ = ["TactileSensor", "mount_sensor"]
