module fixture/chansend

go 1.21
