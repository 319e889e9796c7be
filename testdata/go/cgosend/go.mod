module fixture/cgosend

go 1.21
