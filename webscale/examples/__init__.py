"""Small handlers shipped with webscale, loadable with --handler webscale.examples.NAME:handle."""
