"""What lobbyd needs of the operating system: running commands, atomic files, inotify,
bounded listeners, rate-limited log lines, the settings machinery. Nothing of lobby
imported.
"""
