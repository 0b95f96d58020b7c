"""adapter4rec: parameter-efficient transfer learning for content-based sequential recommendation."""
__version__ = "0.1.0"
